"""`TraceSource`: a run's routing read chunk by chunk, so analyses run in bounded memory (DESIGN §7).

Every analysis is a reduction over independent units (a layer, a sequence, a prompt), so it never
needs the whole run at once: a driver asks a source for chunks (whole sequences, in the source's
sequence order, optionally only some layers), runs a kernel on each chunk, and keeps only the
aggregates. A `Trace` in memory is a source too (`InMemorySource`), so a notebook user passes a
Trace and gets exactly the numbers the streaming path gives on the store.

Sources are the store (`routescope.store.source.StoreSource`: a DuckDB file or a Parquet export)
and `InMemorySource`. Chunks are cut by `plan_chunks`, on sequence boundaries, at most `max_rows`
route rows (token rows × layers) each unless a single aligned group of sequences is larger.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from routescope.core.errors import InvalidParameterError
from routescope.core.trace import PHASES, Trace

#: Route rows (token rows × layers) per chunk: ~100 MB of experts and weights at k = 8.
DEFAULT_CHUNK_ROWS = 4_000_000


@dataclass(frozen=True)
class SourceInfo:
    """What a source holds, known before any chunk is read."""

    num_experts: int
    top_k: int
    layers: tuple[int, ...]
    num_sequences: int
    num_tokens: int
    labels: tuple[str, ...] = ()
    prompt_sets: tuple[str, ...] = ()
    has_weights: bool = True
    #: False for an imported trace without token ids (stored NULL, read as -1)
    has_token_ids: bool = True
    #: speculative rankings recorded: distances 1..D, top-m each (0, 0 when none)
    speculative_distances: int = 0
    speculative_width: int = 0
    run_id: str | None = None
    model_id: str | None = None
    phase: str = "all"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def check_layers(self, layers: Sequence[int] | None) -> tuple[int, ...]:
        """The layers asked for (all when None), each an MoE layer of the run, none twice."""
        if layers is None:
            return self.layers
        sel = tuple(int(x) for x in layers)
        if len(set(sel)) != len(sel):
            raise InvalidParameterError(f"layers {list(sel)} repeat a layer; list each once")
        bad = [x for x in sel if x not in self.layers]
        if bad:
            raise InvalidParameterError(
                f"layer(s) {bad} are not MoE layers of run {self.run_id or ''}; "
                f"MoE layers are {list(self.layers)}"
            )
        return sel


@runtime_checkable
class TraceSource(Protocol):
    """A run's routing, read as chunks of whole sequences (each chunk a `Trace`)."""

    @property
    def info(self) -> SourceInfo: ...

    def seq_lengths(self) -> np.ndarray:
        """int64[S]: token rows of each sequence, in the source's sequence order."""
        ...

    def chunks(
        self,
        *,
        layers: Sequence[int] | None = None,
        max_rows: int = DEFAULT_CHUNK_ROWS,
        align: int = 1,
        seq_range: tuple[int, int] | None = None,
        with_speculative: bool = False,
        with_weights: bool = True,
    ) -> Iterator[Trace]:
        """Chunks of whole sequences in order; `layers` narrows the layers (in the given order),
        `align` puts chunk boundaries at multiples of that many sequences, `seq_range`
        (start, stop) reads only those sequences (indices in the source's order),
        `with_speculative` also reads the recorded speculative rankings (prefetch analyses), and
        `with_weights=False` leaves the gate weights out (chunks without weights are cheaper to
        read, and most analyses count experts only)."""
        ...

    def select(self, *, phase: str = "all", labels: Sequence[str] | None = None) -> TraceSource:
        """The same run narrowed to one phase and/or some labels (a clear error for unknown ones)."""
        ...


def plan_chunks(
    lengths: np.ndarray, num_layers: int, max_rows: int = DEFAULT_CHUNK_ROWS, align: int = 1
) -> list[tuple[int, int]]:
    """Cut sequences 0..S-1 into consecutive (start, stop) chunks of at most `max_rows` route rows.

    Boundaries fall at multiples of `align` sequences (batch-step analyses need whole batches); a
    group of `align` sequences larger than `max_rows` becomes a chunk on its own.
    """
    if align < 1:
        raise InvalidParameterError("chunk alignment must be at least 1 sequence")
    lengths = np.asarray(lengths, dtype=np.int64)
    n = len(lengths)
    if n == 0:
        return []
    starts = np.arange(0, n, align)
    group_rows = np.add.reduceat(lengths, starts) * max(1, num_layers)
    chunks: list[tuple[int, int]] = []
    lo, rows = 0, 0
    for g, size in enumerate(group_rows.tolist()):
        if g > 0 and int(starts[g]) > lo and rows + size > max_rows:
            hi = int(starts[g])
            chunks.append((lo, hi))
            lo, rows = hi, 0
        rows += size
    chunks.append((lo, n))
    return chunks


def check_phase(phase: str) -> str:
    """'all', 'prefill' or 'decode', or one clear error."""
    if phase != "all" and phase not in PHASES:
        raise InvalidParameterError(f"unknown phase {phase!r}; use one of prefill, decode, all")
    return phase


class InMemorySource:
    """A `Trace` seen as a source: chunks are views of it (nothing is copied)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        labels = tuple(sorted({str(x) for x in trace.labels.tolist() if x is not None}))
        sets = tuple(sorted({str(x) for x in trace.prompt_sets.tolist() if x is not None}))
        self._info = SourceInfo(
            num_experts=trace.num_experts,
            top_k=trace.top_k,
            layers=tuple(trace.layers),
            num_sequences=trace.num_sequences,
            num_tokens=trace.num_tokens,
            labels=labels,
            prompt_sets=sets,
            has_weights=trace.has_weights,
            speculative_distances=0 if trace.speculative is None else trace.speculative.shape[2],
            speculative_width=0 if trace.speculative is None else trace.speculative.shape[3],
            run_id=trace.run_id,
            model_id=trace.model_id,
            meta=dict(trace.meta),
        )

    @property
    def info(self) -> SourceInfo:
        return self._info

    def seq_lengths(self) -> np.ndarray:
        return np.asarray(self.trace.seq_lengths, dtype=np.int64)

    def chunks(
        self,
        *,
        layers: Sequence[int] | None = None,
        max_rows: int = DEFAULT_CHUNK_ROWS,
        align: int = 1,
        seq_range: tuple[int, int] | None = None,
        with_speculative: bool = False,
        with_weights: bool = True,
    ) -> Iterator[Trace]:
        sel = self._info.check_layers(layers)
        start, stop = seq_range if seq_range is not None else (0, self.trace.num_sequences)
        lengths = self.seq_lengths()[start:stop]
        for lo, hi in plan_chunks(lengths, len(sel), max_rows, align):
            chunk = self.trace.slice_sequences(start + lo, start + hi)
            if not with_weights and chunk.weights is not None:  # as a store would hand it out
                chunk = replace(chunk, weights=None)
            yield chunk if sel == tuple(self.trace.layers) else chunk.select_layers(sel)

    def select(self, *, phase: str = "all", labels: Sequence[str] | None = None) -> InMemorySource:
        trace = self.trace.select_phase(check_phase(phase))
        if labels:
            trace = trace.select_labels(list(labels))
        return InMemorySource(trace)


def as_source(data: Trace | TraceSource) -> TraceSource:
    """A `TraceSource` for a Trace (in memory) or a source as it is."""
    if isinstance(data, Trace):
        return InMemorySource(data)
    return data
