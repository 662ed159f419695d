"""Running an analysis over a run in bounded memory, in one process or as Ray tasks (DESIGN §7).

Every analysis is a `Reduction`: a kernel that turns one chunk (a `Trace` of whole sequences,
some layers) into a partial result of plain aggregates (counts, sums of hits, histograms), an
exact `merge` of two partials, and a `finalize` that turns the merged partial into the result
frame. Partials hold integers (or exact per-unit values), so any cut of the run into chunks, in
one process or on many machines, gives the result bit for bit.

`reduce_source` is the one-process driver; `plan_units` and `map_unit` are what a distributed
driver (`routescope.analysis.ray_driver`) runs remotely. Chunks never hold more than `max_rows`
route rows (token rows x layers), so peak memory is one chunk plus the aggregates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from routescope.core.source import DEFAULT_CHUNK_ROWS, TraceSource, as_source, plan_chunks
from routescope.core.trace import Trace

P = TypeVar("P")
R = TypeVar("R")

#: progress(done, total): route rows processed so far, of all (for a progress bar).
Progress = Callable[[int, int], None]


class Executor(Protocol):
    """Runs a reduction over a source: in this process (the default) or elsewhere (Ray)."""

    def run(
        self,
        source: TraceSource,
        reduction: Reduction[Any, R],
        *,
        max_rows: int,
        progress: Progress | None,
    ) -> R: ...


@dataclass(frozen=True)
class Reduction(Generic[P, R]):
    """An analysis as kernel → merge → finalize over chunks of a `TraceSource`.

    kernel(chunk) → partial; merge(a, b) → partial (exact, associative); finalize(partial) →
    result; empty() → the partial of no data. `layers`: the MoE layers the kernel reads (None:
    all); `per_layer`: read one layer at a time (when a partial for all layers at once would be
    too large, e.g. vocabulary counts); `align`: chunk boundaries at multiples of this many
    sequences (batch-step cache simulation needs whole batches); `weights`: the kernel reads
    the chunks' gate weights (False: they are not read, which makes reading a store cheaper);
    `speculative`: the kernel reads the recorded speculative rankings (prefetch predictors).
    """

    kernel: Callable[[Trace], P]
    merge: Callable[[P, P], P]
    finalize: Callable[[P], R]
    empty: Callable[[], P]
    layers: tuple[int, ...] | None = None
    per_layer: bool = False
    align: int = 1
    weights: bool = True
    speculative: bool = False
    name: str = "analysis"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One independent piece of work: these layers of sequences start..stop-1 (source order)."""

    layers: tuple[int, ...]
    start: int
    stop: int
    rows: int


def layer_groups(source: TraceSource, reduction: Reduction[Any, Any]) -> list[tuple[int, ...]]:
    """The layer groups the reduction reads: all its layers at once, or one at a time."""
    layers = source.info.check_layers(reduction.layers)
    return [(layer,) for layer in layers] if reduction.per_layer else [layers]


def plan_units(
    source: TraceSource,
    reduction: Reduction[Any, Any],
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    shards: int = 1,
) -> list[Unit]:
    """Units covering the source: per layer group, the sequences cut into about `shards`
    contiguous ranges (each still read in chunks of at most `max_rows`), aligned as asked."""
    lengths = source.seq_lengths()
    units: list[Unit] = []
    for group in layer_groups(source, reduction):
        total = int(lengths.sum()) * len(group)
        target = max(1, -(-total // max(1, shards)))  # ceil: about `shards` ranges per group
        for start, stop in plan_chunks(lengths, len(group), target, reduction.align):
            rows = int(lengths[start:stop].sum()) * len(group)
            units.append(Unit(group, start, stop, rows))
    return units


def map_unit(
    source: TraceSource,
    reduction: Reduction[P, Any],
    unit: Unit,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    done: int = 0,
    total: int = 0,
) -> P:
    """The merged partial of one unit, read in chunks of at most `max_rows` route rows."""
    acc: P | None = None
    for chunk in source.chunks(
        layers=unit.layers,
        max_rows=max_rows,
        align=reduction.align,
        seq_range=(unit.start, unit.stop),
        with_speculative=reduction.speculative,
        with_weights=reduction.weights,
    ):
        part = reduction.kernel(chunk)
        acc = part if acc is None else reduction.merge(acc, part)
        if progress is not None:
            done += chunk.num_tokens * chunk.num_layers
            progress(done, total)
    return reduction.empty() if acc is None else acc


def merge_all(reduction: Reduction[P, Any], partials: Sequence[P]) -> P:
    """All partials merged in order (the empty partial when there are none)."""
    acc: P | None = None
    for part in partials:
        acc = part if acc is None else reduction.merge(acc, part)
    return reduction.empty() if acc is None else acc


def reduce_source(
    data: Trace | TraceSource,
    reduction: Reduction[Any, R],
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
) -> R:
    """Run the reduction over a Trace or a source in one process, chunk by chunk."""
    source = as_source(data)
    units = plan_units(source, reduction, max_rows=max_rows)
    total = sum(u.rows for u in units)
    acc: Any = None  # merged as each unit ends (the order merge_all uses): one partial is kept
    done = 0
    for unit in units:
        part = map_unit(
            source, reduction, unit, max_rows=max_rows, progress=progress, done=done, total=total
        )
        acc = part if acc is None else reduction.merge(acc, part)
        done += unit.rows
    return reduction.finalize(reduction.empty() if acc is None else acc)


def add_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Merge for partials that are dicts of count arrays of equal shapes: element-wise sums."""
    return {key: a[key] + b[key] for key in a}


def run_reduction(
    data: Trace | TraceSource,
    reduction: Reduction[Any, R],
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> R:
    """What every analysis calls: the reduction over `data`, in this process unless an executor
    (e.g. `routescope.analysis.ray_driver.RayExecutor`) is given. Same result either way."""
    if executor is None:
        return reduce_source(data, reduction, max_rows=max_rows, progress=progress)
    return executor.run(as_source(data), reduction, max_rows=max_rows, progress=progress)
