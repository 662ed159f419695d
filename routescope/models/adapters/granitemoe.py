"""GraniteMoE (model_type ``granitemoe``): every layer MoE, router ``block_sparse_moe.router``.

Routing: top-k on the raw logits, then softmax over the k selected logits.
``full_probs`` is the softmax over all E logits, which the model itself never computes.
"""

from __future__ import annotations

from routescope.models.adapters.base import TopKSoftmaxAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("granitemoe", label="GraniteMoE")
class GraniteMoeAdapter(TopKSoftmaxAdapter):
    router_attr = "block_sparse_moe.router"
    experts_attr = "num_local_experts"
