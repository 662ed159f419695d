"""OLMoE (model_type ``olmoe``): every layer MoE, router ``mlp.gate`` (OlmoeTopKRouter).

Routing: softmax over E logits, top-k, renormalized when ``norm_topk_prob`` (False in OLMoE-1B-7B).
"""

from __future__ import annotations

from routescope.models.adapters.base import SoftmaxTopKAdapter


class OlmoeAdapter(SoftmaxTopKAdapter):
    family = "olmoe"
    router_attr = "mlp.gate"

    def is_moe_layer(self, layer: int) -> bool:
        return 0 <= layer < self.num_layers

    @property
    def num_experts(self) -> int:
        return int(self.config.num_experts)
