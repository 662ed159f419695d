"""`Trace`: the in-memory form of one run's routing that every analysis takes.

Plain numpy arrays, token rows grouped by sequence and in position order. No torch, no DuckDB:
an analysis-only user does not pay for either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from routescope.core.errors import InvalidParameterError

PHASES = ("prefill", "decode")
PREFILL, DECODE = 0, 1


@dataclass(frozen=True)
class Trace:
    """Routing of a set of sequences: N token rows, L MoE layers, top-k experts per token.

    experts:     int16[N, L, k]  routed expert ids in rank order (rank 0 = highest score)
    weights:     float32[N, L, k] gate weights as used by the model, or None when the run has
                                  none (an imported trace that records experts only)
    seq_offsets: int64[S+1]      token rows of sequence s are seq_offsets[s]:seq_offsets[s+1]
    phase:       uint8[N]        0 = prefill, 1 = decode (generated)
    token_ids:   int64[N]        input token id of each row
    positions:   int32[N]        position within the sequence
    in_target:   bool[N]         token lies inside the prompt's `target` span
    labels:      object[S]       per-sequence label (str or None)
    seq_ids:     int64[S]        sequence ids as stored
    prompt_sets: object[S]       name of the prompt set each sequence came from
    prompt_ids:  object[S]       prompt id within its set
    speculative: int16[N, L, D, m] or None: for distance d = 1..D, layer l's router applied to the
                                  router input of layer l - d, top-m experts (-1: no such layer)
    """

    experts: np.ndarray
    weights: np.ndarray | None
    seq_offsets: np.ndarray
    num_experts: int
    top_k: int
    layers: tuple[int, ...]
    # optional when building a Trace; always arrays afterwards (__post_init__ fills defaults)
    phase: np.ndarray = None  # type: ignore[assignment]
    token_ids: np.ndarray = None  # type: ignore[assignment]
    positions: np.ndarray = None  # type: ignore[assignment]
    in_target: np.ndarray = None  # type: ignore[assignment]
    labels: np.ndarray = None  # type: ignore[assignment]
    seq_ids: np.ndarray = None  # type: ignore[assignment]
    prompt_sets: np.ndarray = None  # type: ignore[assignment]
    prompt_ids: np.ndarray = None  # type: ignore[assignment]
    speculative: np.ndarray | None = None
    run_id: str | None = None
    model_id: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.experts.shape[0]
        s = len(self.seq_offsets) - 1
        if self.experts.ndim != 3:
            raise ValueError(f"experts must be [N, L, k], got shape {self.experts.shape}")
        if self.weights is not None and self.weights.shape != self.experts.shape:
            raise ValueError("weights and experts must have the same shape")
        if self.experts.shape[1] != len(self.layers):
            raise ValueError("experts.shape[1] must equal len(layers)")
        if self.experts.shape[2] != self.top_k:
            raise ValueError("experts.shape[2] must equal top_k")
        if self.speculative is not None and self.speculative.shape[:2] != self.experts.shape[:2]:
            raise ValueError("speculative must be [N, L, D, m] with the experts' N and L")
        if s < 0 or self.seq_offsets[0] != 0 or self.seq_offsets[-1] != n:
            raise ValueError("seq_offsets must start at 0 and end at the number of token rows")
        if np.any(np.diff(self.seq_offsets) < 0):
            raise ValueError("seq_offsets must be non-decreasing")
        defaults = {
            "phase": lambda: np.zeros(n, dtype=np.uint8),
            "token_ids": lambda: np.zeros(n, dtype=np.int64),
            "positions": lambda: self._positions_from_offsets(),
            "in_target": lambda: np.zeros(n, dtype=bool),
            "labels": lambda: np.full(s, None, dtype=object),
            "seq_ids": lambda: np.arange(s, dtype=np.int64),
            "prompt_sets": lambda: np.full(s, None, dtype=object),
            "prompt_ids": lambda: np.full(s, None, dtype=object),
        }
        for name, make in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, make())

    def _positions_from_offsets(self) -> np.ndarray:
        lengths = np.diff(self.seq_offsets)
        starts = np.repeat(self.seq_offsets[:-1], lengths)
        return (np.arange(self.experts.shape[0]) - starts).astype(np.int32)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_sequences(self) -> int:
        return int(len(self.seq_offsets) - 1)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def seq_lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets)

    @property
    def seq_index(self) -> np.ndarray:
        """int64[N]: the sequence (0..S-1) each token row belongs to."""
        return np.repeat(np.arange(self.num_sequences, dtype=np.int64), self.seq_lengths)

    @property
    def token_labels(self) -> np.ndarray:
        """object[N]: the label of each token row's sequence."""
        return self.labels[self.seq_index]

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    def require_weights(self, what: str) -> np.ndarray:
        """The gate weights, or one clear error naming the analysis that needs them."""
        if self.weights is None:
            raise InvalidParameterError(
                f"{what} needs gate weights, and run {self.run_id or ''} has none (an imported "
                "trace that records experts only); use an expert-count variant instead"
            )
        return self.weights

    def layer_position(self, layer: int) -> int:
        """Column of model layer `layer` in `experts`; a clear error if it is not an MoE layer."""
        try:
            return self.layers.index(layer)
        except ValueError:
            raise InvalidParameterError(
                f"layer {layer} is not an MoE layer of this run; MoE layers are {list(self.layers)}"
            ) from None

    # ---- selections (all return new Traces; sequences stay contiguous and in order) ------------
    def select_tokens(self, mask: np.ndarray) -> Trace:
        """Keep the token rows where mask is true; sequences left empty are dropped."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.num_tokens,):
            raise ValueError("token mask must have one entry per token row")
        counts = (
            np.add.reduceat(mask.astype(np.int64), self.seq_offsets[:-1])
            if len(self.seq_offsets) > 1
            else np.zeros(0, dtype=np.int64)
        )
        # reduceat gives wrong values for empty sequences; fix them.
        counts = np.where(self.seq_lengths > 0, counts, 0)
        keep_seq = counts > 0
        offsets = np.concatenate([[0], np.cumsum(counts[keep_seq])]).astype(np.int64)
        return replace(
            self,
            experts=self.experts[mask],
            weights=None if self.weights is None else self.weights[mask],
            speculative=None if self.speculative is None else self.speculative[mask],
            seq_offsets=offsets,
            phase=self.phase[mask],
            token_ids=self.token_ids[mask],
            positions=self.positions[mask],
            in_target=self.in_target[mask],
            labels=self.labels[keep_seq],
            seq_ids=self.seq_ids[keep_seq],
            prompt_sets=self.prompt_sets[keep_seq],
            prompt_ids=self.prompt_ids[keep_seq],
        )

    def slice_sequences(self, start: int, stop: int) -> Trace:
        """Sequences start..stop-1 as a Trace of views (no copy): a chunk for a streaming kernel."""
        start, stop = max(0, int(start)), min(self.num_sequences, int(stop))
        stop = max(start, stop)
        lo, hi = int(self.seq_offsets[start]), int(self.seq_offsets[stop])
        return replace(
            self,
            experts=self.experts[lo:hi],
            weights=None if self.weights is None else self.weights[lo:hi],
            speculative=None if self.speculative is None else self.speculative[lo:hi],
            seq_offsets=self.seq_offsets[start : stop + 1] - lo,
            phase=self.phase[lo:hi],
            token_ids=self.token_ids[lo:hi],
            positions=self.positions[lo:hi],
            in_target=self.in_target[lo:hi],
            labels=self.labels[start:stop],
            seq_ids=self.seq_ids[start:stop],
            prompt_sets=self.prompt_sets[start:stop],
            prompt_ids=self.prompt_ids[start:stop],
        )

    def select_sequences(self, seq_mask: np.ndarray) -> Trace:
        """Keep whole sequences where seq_mask (one entry per sequence) is true."""
        seq_mask = np.asarray(seq_mask, dtype=bool)
        if seq_mask.shape != (self.num_sequences,):
            raise ValueError("sequence mask must have one entry per sequence")
        return self.select_tokens(np.repeat(seq_mask, self.seq_lengths))

    def select_phase(self, phase: str) -> Trace:
        """'prefill', 'decode' or 'all'."""
        if phase == "all":
            return self
        if phase not in PHASES:
            raise InvalidParameterError(f"unknown phase {phase!r}; use one of prefill, decode, all")
        return self.select_tokens(self.phase == PHASES.index(phase))

    def select_labels(self, labels: Sequence[str]) -> Trace:
        """Keep sequences whose label is one of `labels`; unknown labels are a clear error."""
        present = set(self.labels.tolist())
        missing = [lab for lab in labels if lab not in present]
        if missing:
            known = sorted(str(x) for x in present if x is not None)
            raise InvalidParameterError(f"label(s) {missing} not in this run; labels are {known}")
        return self.select_sequences(np.isin(self.labels, np.asarray(list(labels), dtype=object)))

    def select_layers(self, layers: Sequence[int]) -> Trace:
        """Keep only the given MoE layers (model layer numbers)."""
        cols = [self.layer_position(layer) for layer in layers]
        return replace(
            self,
            experts=self.experts[:, cols, :],
            weights=None if self.weights is None else self.weights[:, cols, :],
            speculative=None if self.speculative is None else self.speculative[:, cols],
            layers=tuple(int(x) for x in layers),
        )

    @property
    def label_set(self) -> list[str]:
        return sorted({str(x) for x in self.labels.tolist() if x is not None})

    @classmethod
    def from_sequences(
        cls,
        experts: Sequence[np.ndarray],
        num_experts: int,
        weights: Sequence[np.ndarray] | None = None,
        labels: Sequence[str | None] | None = None,
        layers: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> Trace:
        """Build a Trace from per-sequence arrays of shape [T, L, k] (or [T, k] for one layer).

        Handy for tests and synthetic benchmarks; weights default to 1/k.
        """
        arrs = [np.asarray(e) for e in experts]
        arrs = [a[:, None, :] if a.ndim == 2 else a for a in arrs]
        if not arrs:
            raise ValueError("no sequences")
        _, n_layers, k = arrs[0].shape
        ex = np.concatenate(arrs).astype(np.int16) if arrs else np.zeros((0, n_layers, k))
        if weights is None:
            w = np.full(ex.shape, 1.0 / k, dtype=np.float32)
        else:
            ws = [np.asarray(x) for x in weights]
            ws = [a[:, None, :] if a.ndim == 2 else a for a in ws]
            w = np.concatenate(ws).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrs])]).astype(np.int64)
        lab = None if labels is None else np.asarray(list(labels), dtype=object)
        return cls(
            experts=ex,
            weights=w,
            seq_offsets=offsets,
            num_experts=int(num_experts),
            top_k=int(k),
            layers=tuple(layers) if layers is not None else tuple(range(n_layers)),
            labels=lab,  # type: ignore[arg-type]  # None: filled in
            **kwargs,
        )
