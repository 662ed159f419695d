"""GraniteMoE-Shared (model_type ``granitemoeshared``): GraniteMoE routing plus a shared MLP.

Router ``block_sparse_moe.router``: top-k on raw logits, softmax over the k. The always-on shared
MLP (``shared_mlp``, present when ``shared_intermediate_size > 0``) counts as one shared expert.
"""

from __future__ import annotations

from routescope.models.adapters.granitemoe import GraniteMoeAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("granitemoeshared", label="GraniteMoE-shared")
class GraniteMoeSharedAdapter(GraniteMoeAdapter):
    @property
    def num_shared_experts(self) -> int:
        return 1 if int(getattr(self.config, "shared_intermediate_size", 0) or 0) > 0 else 0
