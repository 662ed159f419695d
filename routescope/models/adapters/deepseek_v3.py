"""DeepSeek-V3 (model_type ``deepseek_v3``): sigmoid routing with a selection-only bias.

Layers below ``first_k_dense_replace`` are dense. Router ``mlp.gate`` (DeepseekV3TopkRouter):
scores = sigmoid(logits); selection ranks ``scores + e_score_correction_bias`` restricted to the
``topk_group`` groups whose two best biased scores sum highest; the weights are the unbiased
``scores`` of the chosen experts, renormalized when ``norm_topk_prob`` and then multiplied by
``routed_scaling_factor`` (exactly what the experts are weighted by). Rank order is by the biased
selection score. ``full_probs`` returns the sigmoid scores (each in (0, 1); rows do not sum to 1).
``rank_experts`` (speculative recording) ranks the kept groups' experts first, then the others.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from routescope.models.adapters.base import MoEAdapter, ranked_within_then_rest, remove_experts
from routescope.models.adapters.registry import register_adapter


@register_adapter("deepseek_v3", label="DeepSeek-V3")
class DeepseekV3Adapter(MoEAdapter):
    router_attr = "mlp.gate"
    experts_attr = "n_routed_experts"
    output_sorted = False
    probs_kind = "sigmoid"
    routing = "sigmoid, selection-only bias, group-limited top-k, times routed_scaling_factor"
    weights_doc = "sigmoid scores of the chosen experts, renormalized if norm_topk_prob, times routed_scaling_factor"

    def is_moe_layer(self, layer: int) -> bool:
        return int(self.config.first_k_dense_replace) <= layer < self.num_layers

    @property
    def num_shared_experts(self) -> int:
        return int(self.config.n_shared_experts or 0)

    def _choice(self, logits: torch.Tensor, router: nn.Module) -> torch.Tensor:
        """What selection ranks: sigmoid scores plus the selection-only bias."""
        bias: torch.Tensor = router.e_score_correction_bias  # type: ignore[assignment]
        return torch.sigmoid(logits.float()) + bias.float()

    def _kept(self, choice: torch.Tensor) -> torch.Tensor:
        """bool (tokens, E): the experts of the ``topk_group`` groups whose two best scores sum
        highest (the only ones the router may choose)."""
        n_group = int(self.config.n_group)
        grouped = choice.view(-1, n_group, self.num_experts // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        keep = torch.topk(group_scores, k=int(self.config.topk_group), dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        return group_mask.unsqueeze(-1).expand_as(grouped).reshape_as(choice)

    def selection_scores(
        self, logits: torch.Tensor, router: nn.Module, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        choice = remove_experts(self._choice(logits, router), mask)
        return choice.masked_fill(~self._kept(choice), float("-inf"))

    def router_logits(self, router: Any, hidden: torch.Tensor) -> torch.Tensor:
        """The projection of DeepseekV3TopkRouter.forward alone (float32), without its group selection."""
        weight: torch.Tensor = router.weight
        return F.linear(hidden.float(), weight.float())

    def rank_experts(self, logits: torch.Tensor, router: nn.Module, m: int) -> torch.Tensor:
        """Top-``m`` by biased score within the kept groups (the router's own selection), then,
        past the ``topk_group * E / n_group`` candidates, the other experts by biased score."""
        choice = self._choice(logits, router)
        per_group = self.num_experts // int(self.config.n_group)
        candidates = int(self.config.topk_group) * per_group
        return ranked_within_then_rest(choice, self._kept(choice), m, candidates)

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
