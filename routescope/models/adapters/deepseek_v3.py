"""DeepSeek-V3 (model_type ``deepseek_v3``): sigmoid routing with a selection-only bias.

Layers below ``first_k_dense_replace`` are dense. Router ``mlp.gate`` (DeepseekV3TopkRouter):
scores = sigmoid(logits); selection ranks ``scores + e_score_correction_bias`` restricted to the
``topk_group`` groups whose two best biased scores sum highest; the weights are the unbiased
``scores`` of the chosen experts, renormalized when ``norm_topk_prob`` and then multiplied by
``routed_scaling_factor`` (exactly what the experts are weighted by). Rank order is by the biased
selection score. ``full_probs`` returns the sigmoid scores (each in (0, 1); rows do not sum to 1).
``rank_experts`` (speculative recording) ranks the kept groups' experts first, then the others.
The layout and the group selection are `GroupLimitedAdapter`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from routescope.models.adapters.base import GroupLimitedAdapter, remove_experts
from routescope.models.adapters.registry import register_adapter


@register_adapter("deepseek_v3", label="DeepSeek-V3")
class DeepseekV3Adapter(GroupLimitedAdapter):
    probs_kind = "sigmoid"
    routing = "sigmoid, selection-only bias, group-limited top-k, times routed_scaling_factor"
    weights_doc = "sigmoid scores of the chosen experts, renormalized if norm_topk_prob, times routed_scaling_factor"

    def _choice(self, logits: torch.Tensor, router: nn.Module) -> torch.Tensor:
        """What selection ranks: sigmoid scores plus the selection-only bias."""
        bias: torch.Tensor = router.e_score_correction_bias  # type: ignore[assignment]
        return torch.sigmoid(logits.float()) + bias.float()

    def group_score(self, grouped: torch.Tensor) -> torch.Tensor:
        """The sum of a group's two best biased scores."""
        return grouped.topk(2, dim=-1).values.sum(dim=-1)

    def selection_scores(
        self, logits: torch.Tensor, router: nn.Module, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        choice = remove_experts(self._choice(logits, router), mask)
        return choice.masked_fill(~self.kept_groups(choice), float("-inf"))

    def rank_experts(self, logits: torch.Tensor, router: nn.Module, m: int) -> torch.Tensor:
        """Top-``m`` by biased score within the kept groups (the router's own selection), then
        the other experts by biased score."""
        return self.rank_within_groups(self._choice(logits, router), m)

    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        weights = torch.sigmoid(logits.float()).gather(-1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * float(self.config.routed_scaling_factor)

    def full_probs(self, logits: torch.Tensor, router: nn.Module) -> torch.Tensor:
        """Sigmoid scores over all E experts (not a distribution: rows do not sum to 1)."""
        return torch.sigmoid(logits.float())
