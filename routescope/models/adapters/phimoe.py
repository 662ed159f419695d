"""PhiMoE (model_type ``phimoe``): every layer MoE, router ``mlp.router``, top-2 "sparsemixer".

Eval-mode routing: expert 1 is the argmax logit, its weight the softmax over the logits within a
relative distance ``2 * router_jitter_noise`` of it; expert 2 is the argmax of the rest, its weight
the softmax over the remaining logits within that distance of it. The two weights do not sum to 1
(no renormalization). Always top-2. ``full_probs`` is the softmax over all E logits, which the model
itself never computes.
"""

from __future__ import annotations

import torch
from torch import nn

from routescope.models.adapters.base import TopKLogitsAdapter
from routescope.models.adapters.registry import register_adapter


def _sparse_weight(
    scores: torch.Tensor, chosen: torch.Tensor, ref: torch.Tensor, eps: float
) -> torch.Tensor:
    """Softmax weight of ``chosen`` among ``scores`` within relative distance 2*eps of ``ref``."""
    threshold = ref.gather(-1, chosen)
    factor = ref.abs().clamp(min=threshold)
    far = ((threshold - ref) / factor) > (2 * eps)
    return torch.softmax(scores.masked_fill(far, float("-inf")), dim=-1).gather(-1, chosen)


@register_adapter("phimoe", label="PhiMoE")
class PhimoeAdapter(TopKLogitsAdapter):
    router_attr = "mlp.router"
    experts_attr = "num_local_experts"
    routing = "sparsemixer top-2 (argmax, then a softmax over near-top logits per rank)"
    weights_doc = (
        "sparsemixer multipliers: per-rank softmax over near-top logits (no renormalization)"
    )

    @property
    def top_k(self) -> int:
        return 2

    @property
    def norm_topk_prob(self) -> bool:
        return False

    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        eps = float(self.config.router_jitter_noise)
        scores = self.selection_scores(logits, router, mask)
        first, second = indices[:, :1], indices[:, 1:2]
        w1 = _sparse_weight(scores, first, logits, eps)
        rest = scores.scatter(-1, first, float("-inf"))
        w2 = _sparse_weight(rest, second, logits, eps)
        return torch.cat([w1, w2], dim=-1)
