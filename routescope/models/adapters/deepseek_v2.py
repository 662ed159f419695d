"""DeepSeek-V2 (model_type ``deepseek_v2``): router ``mlp.gate``, shared experts, dense first layers.

Layers below ``first_k_dense_replace`` are dense. Routing (DeepseekV2TopkRouter): softmax over E;
``topk_method="greedy"``: top-k of the probabilities; ``"group_limited_greedy"``: keep the
``topk_group`` groups with the highest max probability (others zeroed), then top-k. The router's
top-k is unsorted; routescope reorders it by probability. Recorded weights are the selected
probabilities times ``routed_scaling_factor`` (no renormalization in this implementation).
``rank_experts`` (speculative recording) ranks the kept groups' experts first, then the others.
The layout and the group selection are `GroupLimitedAdapter`'s.
"""

from __future__ import annotations

import torch
from torch import nn

from routescope.models.adapters.base import GroupLimitedAdapter, remove_experts
from routescope.models.adapters.registry import register_adapter


@register_adapter("deepseek_v2", label="DeepSeek-V2")
class DeepseekV2Adapter(GroupLimitedAdapter):
    routing = "softmax over E, (group-limited) top-k, times routed_scaling_factor"
    weights_doc = "selected softmax probabilities times routed_scaling_factor"

    @property
    def norm_topk_prob(self) -> bool:
        return False

    def _grouped(self) -> bool:
        return self.config.topk_method == "group_limited_greedy"

    def group_score(self, grouped: torch.Tensor) -> torch.Tensor:
        """A group's best probability."""
        return grouped.max(dim=-1).values

    def selection_scores(
        self, logits: torch.Tensor, router: nn.Module, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        scores = torch.softmax(logits.float(), dim=-1)
        scores = remove_experts(scores, mask)
        if self._grouped():
            scores = scores.masked_fill(~self.kept_groups(scores), 0.0)
        return scores

    def rank_experts(self, logits: torch.Tensor, router: nn.Module, m: int) -> torch.Tensor:
        """Top-``m`` by probability; with group-limited greedy, within the kept groups first (the
        router's own selection), then the other experts by probability."""
        if not self._grouped():
            return super().rank_experts(logits, router, m)
        return self.rank_within_groups(torch.softmax(logits.float(), dim=-1), m)

    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1).gather(-1, indices)
        return probs * float(self.config.routed_scaling_factor)
