"""GPT-OSS (model_type ``gpt_oss``): every layer MoE, router ``mlp.router`` (a linear with bias).

Routing: top-k on the raw logits (bias included), then softmax over the k selected logits.
``full_probs`` is the softmax over all E logits, which the model itself never computes.
"""

from __future__ import annotations

from routescope.models.adapters.base import TopKSoftmaxAdapter


class GptOssAdapter(TopKSoftmaxAdapter):
    family = "gpt_oss"
    router_attr = "mlp.router"

    def is_moe_layer(self, layer: int) -> bool:
        return 0 <= layer < self.num_layers

    @property
    def num_experts(self) -> int:
        return int(self.config.num_local_experts)
