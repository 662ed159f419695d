"""`ModelShape`: a model's routing shape (MoE layers, E, k), what a steering spec is checked against.

A plain dataclass (no torch, no model) so that specs can be validated by the CLI before any weights
load, and by the dashboard from a stored run alone. It is built in exactly three ways:

- from a loaded model: ``LoadedModel.shape`` (or ``MoEAdapter.shape``), i.e. `ModelShape.of`;
- from a config only: ``routescope.models.config_shape(model)`` (reads ``config.json``, no weights);
- from a stored run: `ModelShape.from_run_info` on the run's info (``RoutingStore.run_info``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ModelShape"]


class _HasShape(Protocol):
    """Anything that knows its MoE layers, E and k (an adapter, a `LoadedModel`)."""

    @property
    def moe_layers(self) -> Sequence[int]: ...

    @property
    def num_experts(self) -> int: ...

    @property
    def top_k(self) -> int: ...


@dataclass(frozen=True)
class ModelShape:
    """What validation needs to know about a model: its MoE layers, E and k."""

    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int

    @classmethod
    def of(cls, model: _HasShape) -> ModelShape:
        """The shape of anything with ``moe_layers``, ``num_experts`` and ``top_k``."""
        return cls(
            moe_layers=tuple(int(x) for x in model.moe_layers),
            num_experts=int(model.num_experts),
            top_k=int(model.top_k),
        )

    @classmethod
    def from_run_info(cls, info: Mapping[str, Any]) -> ModelShape:
        """The shape recorded with a run (keys ``moe_layers``, ``num_experts``, ``top_k``)."""
        return cls(
            moe_layers=tuple(int(x) for x in info["moe_layers"]),
            num_experts=int(info["num_experts"]),
            top_k=int(info["top_k"]),
        )
