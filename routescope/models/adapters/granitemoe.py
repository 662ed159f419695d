"""GraniteMoE (model_type ``granitemoe``): every layer MoE, router ``block_sparse_moe.router``.

Routing: top-k on the raw logits, then softmax over the k selected logits.
``full_probs`` is the softmax over all E logits, which the model itself never computes.
"""

from __future__ import annotations

from routescope.models.adapters.base import TopKSoftmaxAdapter


class GraniteMoeAdapter(TopKSoftmaxAdapter):
    family = "granitemoe"
    router_attr = "block_sparse_moe.router"

    def is_moe_layer(self, layer: int) -> bool:
        return 0 <= layer < self.num_layers

    @property
    def num_experts(self) -> int:
        return int(self.config.num_local_experts)
