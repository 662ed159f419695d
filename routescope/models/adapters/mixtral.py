"""Mixtral (model_type ``mixtral``): every layer MoE, router ``mlp.gate`` (MixtralTopKRouter).

Routing: softmax over E logits, top-k, always renormalized over the k (the weights sum to 1).
"""

from __future__ import annotations

from routescope.models.adapters.base import SoftmaxTopKAdapter


class MixtralAdapter(SoftmaxTopKAdapter):
    family = "mixtral"
    router_attr = "mlp.gate"
    weights_doc = "softmax probabilities of the top-k experts, renormalized to sum 1"

    def is_moe_layer(self, layer: int) -> bool:
        return 0 <= layer < self.num_layers

    @property
    def num_experts(self) -> int:
        return int(self.config.num_local_experts)

    @property
    def norm_topk_prob(self) -> bool:
        return True
