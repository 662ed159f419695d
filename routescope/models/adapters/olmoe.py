"""OLMoE (model_type ``olmoe``): every layer MoE, router ``mlp.gate`` (OlmoeTopKRouter).

Routing: softmax over E logits, top-k, renormalized when ``norm_topk_prob`` (False in OLMoE-1B-7B).
"""

from __future__ import annotations

from routescope.models.adapters.base import SoftmaxTopKAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("olmoe", label="OLMoE")
class OlmoeAdapter(SoftmaxTopKAdapter):
    router_attr = "mlp.gate"
    experts_attr = "num_experts"
