"""DeepSeek-V2 (model_type ``deepseek_v2``): router ``mlp.gate``, shared experts, dense first layers.

Layers below ``first_k_dense_replace`` are dense. Routing (DeepseekV2TopkRouter): softmax over E;
``topk_method="greedy"``: top-k of the probabilities; ``"group_limited_greedy"``: keep the
``topk_group`` groups with the highest max probability (others zeroed), then top-k. The router's
top-k is unsorted; routescope reorders it by probability. Recorded weights are the selected
probabilities times ``routed_scaling_factor`` (no renormalization in this implementation).
``rank_experts`` (speculative recording) ranks the kept groups' experts first, then the others.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from routescope.models.adapters.base import MoEAdapter, ranked_within_then_rest, remove_experts
from routescope.models.adapters.registry import register_adapter


@register_adapter("deepseek_v2", label="DeepSeek-V2")
class DeepseekV2Adapter(MoEAdapter):
    router_attr = "mlp.gate"
    experts_attr = "n_routed_experts"
    output_sorted = False
    routing = "softmax over E, (group-limited) top-k, times routed_scaling_factor"
    weights_doc = "selected softmax probabilities times routed_scaling_factor"

    def is_moe_layer(self, layer: int) -> bool:
        return int(self.config.first_k_dense_replace) <= layer < self.num_layers

    @property
    def num_shared_experts(self) -> int:
        return int(self.config.n_shared_experts or 0)

    @property
    def norm_topk_prob(self) -> bool:
        return False

    def _grouped(self) -> bool:
        return self.config.topk_method == "group_limited_greedy"

    def _kept(self, scores: torch.Tensor) -> torch.Tensor:
        """bool (tokens, E): the experts of the ``topk_group`` groups with the highest max score."""
        n_group = int(self.config.n_group)
        grouped = scores.view(-1, n_group, self.num_experts // n_group)
        group_scores = grouped.max(dim=-1).values
        keep = torch.topk(group_scores, k=int(self.config.topk_group), dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        return group_mask.unsqueeze(-1).expand_as(grouped).reshape_as(scores)

    def selection_scores(
        self, logits: torch.Tensor, router: nn.Module, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        scores = torch.softmax(logits.float(), dim=-1)
        scores = remove_experts(scores, mask)
        if self._grouped():
            scores = scores.masked_fill(~self._kept(scores), 0.0)
        return scores

    def router_logits(self, router: Any, hidden: torch.Tensor) -> torch.Tensor:
        """The projection of DeepseekV2TopkRouter.forward alone (float32), without its group selection."""
        weight: torch.Tensor = router.weight
        return F.linear(hidden.float(), weight.float())

    def rank_experts(self, logits: torch.Tensor, router: nn.Module, m: int) -> torch.Tensor:
        """Top-``m`` by probability; with group-limited greedy, within the kept groups first (the
        router's own selection), then the other experts by probability."""
        if not self._grouped():
            return super().rank_experts(logits, router, m)
        scores = torch.softmax(logits.float(), dim=-1)
        per_group = self.num_experts // int(self.config.n_group)
        candidates = int(self.config.topk_group) * per_group
        return ranked_within_then_rest(scores, self._kept(scores), m, candidates)

    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1).gather(-1, indices)
        return probs * float(self.config.routed_scaling_factor)
