"""Llama-4 text (model_type ``llama4_text``): sigmoid top-k router plus one shared expert.

MoE layers are ``config.moe_layers`` (from ``interleave_moe_layer_step`` when unset); router
``feed_forward.router`` (Llama4Router) returns ``(scores (tokens, E), logits)`` where ``scores`` is
sigmoid of the top-k logits and 0 elsewhere. Recorded weights are those sigmoid values (Llama-4
multiplies the expert *inputs* by them); no renormalization. ``full_probs`` is sigmoid(logits).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from routescope.models.adapters.base import TopKLogitsAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("llama4_text", label="Llama-4 (text)")
class Llama4Adapter(TopKLogitsAdapter):
    router_attr = "feed_forward.router"
    experts_attr = "num_local_experts"
    probs_kind = "sigmoid"
    routing = "top-k on raw logits, sigmoid of the k (router returns (scores over E, logits))"
    weights_doc = "sigmoid of the selected router logits (scales the expert inputs)"

    def is_moe_layer(self, layer: int) -> bool:
        return 0 <= layer < self.num_layers and layer in set(self.config.moe_layers or [])

    @property
    def num_shared_experts(self) -> int:
        return 1

    @property
    def norm_topk_prob(self) -> bool:
        return False

    def unpack(self, output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scores, logits = output
        indices = torch.topk(logits, self.top_k, dim=1).indices  # the router's own selection
        return logits, scores.gather(1, indices), indices

    def pack(self, output: Any, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        scores, logits = output
        edited = torch.zeros_like(scores).scatter(1, indices, weights.to(scores.dtype))
        return edited, logits

    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.sigmoid(logits.gather(-1, indices).float()).to(logits.dtype)

    def full_probs(self, logits: torch.Tensor, router: nn.Module) -> torch.Tensor:
        """Sigmoid of every router logit (not a distribution: rows do not sum to 1)."""
        return torch.sigmoid(logits.float())
