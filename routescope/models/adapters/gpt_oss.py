"""GPT-OSS (model_type ``gpt_oss``): every layer MoE, router ``mlp.router`` (a linear with bias).

Routing: top-k on the raw logits (bias included), then softmax over the k selected logits.
``full_probs`` is the softmax over all E logits, which the model itself never computes.
"""

from __future__ import annotations

from routescope.models.adapters.base import TopKSoftmaxAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("gpt_oss", label="GPT-OSS")
class GptOssAdapter(TopKSoftmaxAdapter):
    router_attr = "mlp.router"
    experts_attr = "num_local_experts"
