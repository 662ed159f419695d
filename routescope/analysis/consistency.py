"""Local routing consistency (DESIGN.md §4.1): repetition rates, SRP and SCH, exact, streamed.

Windows are every run of L consecutive tokens inside a sequence (stride 1); sequences shorter
than L contribute no window. One sliding pass per (layer, L) keeps the sorted multiset of
per-expert window counts under +-1 updates, so all thresholds c in 0..L (SRP) and all capacities
(segment-oracle SCH) come out of O(k) work per token.

Streaming (DESIGN §7): windows and consecutive pairs never cross sequences, so each analysis reads
the run in chunks of whole sequences and keeps integer aggregates (pair counts; per window length,
the histogram G of window counts n_{w,e}, the sums S of the i-th largest counts, the number of
windows); rates come last. The shuffled baseline permutes each sequence with a permutation drawn
from (seed, seq_id, length) alone, so it too is the same however the run is cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from math import comb

import numpy as np
import polars as pl

from routescope.analysis import _kernels as K
from routescope.analysis.cache import (
    CacheCounts,
    CacheSpec,
    _cache_kernel,
    _empty_counts,
    _merge_counts,
    check_capacities,
    check_policies,
    phase_requests,
    select,
)
from routescope.analysis.policies import SERVICES, Requests
from routescope.analysis.streaming import Executor, Progress, Reduction, run_reduction
from routescope.core.errors import InvalidParameterError
from routescope.core.source import DEFAULT_CHUNK_ROWS, SourceInfo, TraceSource
from routescope.core.trace import Trace

SCH_KINDS = ("segment-oracle", "lookahead")
CONSISTENCY_PHASES = ("all", "prefill", "decode")


def check_segment_lengths(segment_lengths: Iterable[int]) -> list[int]:
    """Segment lengths as sorted unique ints >= 1; a clear error otherwise."""
    segs = sorted({int(s) for s in segment_lengths})
    if not segs:
        raise InvalidParameterError("no segment lengths given; pass at least one integer >= 1")
    if segs[0] < 1:
        raise InvalidParameterError(f"segment length {segs[0]} is invalid; use integers >= 1")
    return segs


def _check_phase(phase: str) -> str:
    if phase not in CONSISTENCY_PHASES:
        raise InvalidParameterError(f"unknown phase {phase!r}; use one of all, prefill, decode")
    return phase


# ---- the shuffled baseline, seeded per sequence ----------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64) + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shuffle_order(offsets: np.ndarray, seq_ids: np.ndarray, seed: int) -> np.ndarray:
    """int64[N]: a permutation of token rows within each sequence, drawn from (seed, seq_id) and
    the row's index in its sequence only, so any chunking of the run gives the same order."""
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    n = int(offsets[-1]) if len(offsets) else 0
    seq = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    idx = np.arange(n, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    base = _mix(_mix(np.full(len(lengths), seed % 2**64, dtype=np.uint64)) ^ _mix(seq_ids))
    keys = _mix(base[seq] ^ idx.astype(np.uint64))
    return np.lexsort((keys, seq))


def shuffled(trace: Trace, seed: int = 0) -> Trace:
    """The same trace with token order permuted within each sequence (seeded per sequence id).

    Keeps every sequence's load skew and removes its locality: the baseline for SRP/SCH.
    """
    order = shuffle_order(trace.seq_offsets, np.asarray(trace.seq_ids, dtype=np.int64), seed)
    weights = None if trace.weights is None else trace.weights[order]
    return replace(trace, experts=trace.experts[order], weights=weights)


def _arrays(
    chunk: Trace, phase: str, seed: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(X, offsets, chunk bounds, E) of the chunk's `phase` tokens, shuffled when seed is given."""
    X, offsets = phase_requests(chunk, phase)
    if seed is not None:
        order = shuffle_order(offsets, np.asarray(chunk.seq_ids, dtype=np.int64), seed)
        X = K.select_rows(X, order)
    bounds = Requests(X, offsets, chunk.num_experts).chunks
    return X, offsets, bounds, chunk.num_experts


# ---- repetition -----------------------------------------------------------------------------------
def _rep_kernel(phase: str, chunk: Trace) -> np.ndarray:
    X, offsets = phase_requests(chunk, phase)
    pairs, top1, share, overlap = K.repetition_counts(X, offsets)
    return np.concatenate([[pairs], top1, share, overlap]).astype(np.int64)


def _rep_finalize(info: SourceInfo, phase: str, acc: np.ndarray) -> pl.DataFrame:
    nl = len(info.layers)
    E, k = info.num_experts, info.top_k
    pairs = int(acc[0])
    top1, share, overlap = acc[1 : 1 + nl], acc[1 + nl : 1 + 2 * nl], acc[1 + 2 * nl :]
    layers: list[int | None] = [*info.layers, None]
    top1 = np.append(top1, top1.sum())
    share = np.append(share, share.sum())
    overlap = np.append(overlap, overlap.sum())
    n = np.array([pairs] * nl + [pairs * nl], dtype=np.float64)
    den = np.maximum(n, 1)
    chance2 = 1 - comb(E - 2, 2) / comb(E, 2) if k >= 2 and E >= 2 else None
    return pl.DataFrame(
        {
            "phase": [phase] * len(layers),
            "layer": layers,
            "pairs": n.astype(np.int64),
            "top1_repeat": np.where(n > 0, top1 / den, np.nan),
            "top1_chance": [1.0 / E] * len(layers),
            "top2_share": np.where((n > 0) & (k >= 2), share / den, np.nan),
            "top2_chance": [chance2] * len(layers),
            "topk_overlap": np.where(n > 0, overlap / (den * k), np.nan),
            "topk_chance": [k / E] * len(layers),
        },
        schema_overrides={"layer": pl.Int64, "top2_chance": pl.Float64},
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def _sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a + b


def _zeros(size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.int64)


def repetition_reduction(info: SourceInfo, phase: str = "all") -> Reduction:
    """`repetition_rates` as a `Reduction` (partial: pairs, then top-1, top-2 and top-k overlap
    counts per layer, one int64 vector)."""
    _check_phase(phase)
    return Reduction(
        kernel=partial(_rep_kernel, phase),
        merge=_sum,
        finalize=partial(_rep_finalize, info, phase),
        empty=partial(_zeros, 1 + 3 * len(info.layers)),
        weights=False,
        name="repetition",
    )


def repetition_rates(
    data: Trace | TraceSource,
    phase: str = "all",
    labels: Sequence[str] | None = None,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Per layer (and pooled, layer null): how often consecutive tokens repeat their routing.

    top1_repeat: the top-1 expert repeats (chance 1/E); top2_share: the top-2 sets share an
    expert (chance 1 - C(E-2,2)/C(E,2)); topk_overlap: mean |S_t ∩ S_{t-1}|/k (chance k/E).
    Pairs are consecutive token rows (of the phase) of the same sequence.
    """
    _check_phase(phase)
    src = select(data, labels)
    red = repetition_reduction(src.info, phase)
    return run_reduction(src, red, max_rows=max_rows, progress=progress, executor=executor)


# ---- window statistics (SRP, segment-oracle SCH) --------------------------------------------------
@dataclass(frozen=True)
class WindowSpec:
    """Window lengths, phase and the shuffled-baseline seed of one SRP or SCH call."""

    segs: tuple[int, ...]
    phase: str
    seed: int | None
    num_layers: int
    num_experts: int


def _window_empty(spec: WindowSpec) -> dict[tuple[str, int], np.ndarray]:
    """Per (order, L): int64[nL, (L+1) + E + 1] = G (window count histogram), S (sums of the
    i-th largest counts), W (windows)."""
    orders = ("original",) if spec.seed is None else ("original", "shuffled")
    width = {seg: seg + 1 + spec.num_experts + 1 for seg in spec.segs}
    return {
        (o, seg): np.zeros((spec.num_layers, width[seg]), dtype=np.int64)
        for o in orders
        for seg in spec.segs
    }


def _window_kernel(spec: WindowSpec, chunk: Trace) -> dict[tuple[str, int], np.ndarray]:
    out = _window_empty(spec)
    for order, seed in (("original", None), ("shuffled", spec.seed)):
        if order == "shuffled" and seed is None:
            continue
        X, offsets, bounds, E = _arrays(chunk, spec.phase, seed)
        for seg in spec.segs:
            G, S, W = K.window_stats(X, offsets, bounds, E, seg)
            out[order, seg] = np.hstack([G, S, W[:, None]])
    return out


def _merge_dicts(a: dict, b: dict) -> dict:
    return {key: a[key] + b[key] for key in a}


def _window_parts(arr: np.ndarray, seg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G, S, W) of a per-(order, L) partial."""
    return arr[:, : seg + 1], arr[:, seg + 1 : -1], arr[:, -1]


def srp_from_counts(G: np.ndarray, seg: int, k: int) -> tuple[float, int, float, float]:
    """(SRP, c*, ĝ, F1 at c=0) from G[v] = #(window, expert) pairs with count v.

    F1(c) = 2TP/(P + A) with TP = Σ_{v>=c} v·G[v], P = L·Σ_{v>=c} G[v], A = k·L·#windows;
    c* is the smallest c reaching the maximum; ĝ = P(c*)/A.
    """
    v = np.arange(seg + 1, dtype=np.float64)
    tp = np.cumsum((v * G)[::-1])[::-1]
    pc = seg * np.cumsum(G[::-1])[::-1].astype(np.float64)
    a = tp[0]  # = Σ n_{w,e} = k·L·#windows
    if a == 0:
        return float("nan"), 0, float("nan"), float("nan")
    f1 = 2 * tp / (pc + a)
    c_star = int(np.argmax(f1))
    return float(f1[c_star]), c_star, float(pc[c_star] / a), float(f1[0])


def _srp_finalize(
    info: SourceInfo, spec: WindowSpec, pooled: bool, acc: dict[tuple[str, int], np.ndarray]
) -> pl.DataFrame:
    k, r = info.top_k, info.top_k / info.num_experts
    rows: list[dict] = []
    for seg in spec.segs:
        G, _, W = _window_parts(acc["original", seg], seg)
        Gs = None if spec.seed is None else _window_parts(acc["shuffled", seg], seg)[0]
        cells: list[tuple[int | None, np.ndarray, np.ndarray | None, int]] = [
            (layer, G[i], None if Gs is None else Gs[i], int(W[i]))
            for i, layer in enumerate(info.layers)
        ]
        if pooled:
            cells.append(
                (None, G.sum(axis=0), None if Gs is None else Gs.sum(axis=0), int(W.sum()))
            )
        for layer, g, gs, w in cells:
            val, c_star, g_hat, _ = srp_from_counts(g, seg, k)
            row = {
                "phase": spec.phase,
                "layer": layer,
                "segment_length": seg,
                "windows": w,
                "srp": val,
                "c_star": c_star if w else None,
                "g_hat": g_hat,
                "floor": 2 * r / (1 + r),
            }
            if gs is not None:
                sval, _, sg, _ = srp_from_counts(gs, seg, k)
                row |= {"srp_shuffled": sval, "g_hat_shuffled": sg, "locality_gap": val - sval}
            rows.append(row)
    return pl.DataFrame(
        rows, schema_overrides={"layer": pl.Int64, "c_star": pl.Int64}
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def _window_spec(
    info: SourceInfo, segment_lengths: Iterable[int], phase: str, seed: int | None
) -> WindowSpec:
    return WindowSpec(
        segs=tuple(check_segment_lengths(segment_lengths)),
        phase=_check_phase(phase),
        seed=None if seed is None else int(seed),
        num_layers=len(info.layers),
        num_experts=info.num_experts,
    )


def srp_reduction(
    info: SourceInfo,
    segment_lengths: Iterable[int] = (4, 16, 64, 256),
    pooled: bool = True,
    shuffled_seed: int | None = 0,
    phase: str = "all",
) -> Reduction:
    """`srp` as a `Reduction` (partial: per (order, L) the window histograms G and counts)."""
    spec = _window_spec(info, segment_lengths, phase, shuffled_seed)
    return Reduction(
        kernel=partial(_window_kernel, spec),
        merge=_merge_dicts,
        finalize=partial(_srp_finalize, info, spec, pooled),
        empty=partial(_window_empty, spec),
        weights=False,
        name="SRP",
    )


def srp(
    data: Trace | TraceSource,
    segment_lengths: Iterable[int] = (4, 16, 64, 256),
    pooled: bool = True,
    shuffled_seed: int | None = 0,
    phase: str = "all",
    labels: Sequence[str] | None = None,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Segment Routing best Performance per layer (and pooled over layers, layer null).

    Columns: segment_length, windows, srp, c_star, g_hat, floor (= 2r/(1+r), what c = 0 gives),
    and with a seed the shuffled-order baseline (srp_shuffled, g_hat_shuffled) and the gap; each
    sequence is shuffled with its own permutation drawn from (seed, seq_id).
    """
    check_segment_lengths(segment_lengths)
    _check_phase(phase)
    src = select(data, labels)
    red = srp_reduction(src.info, segment_lengths, pooled, shuffled_seed, phase)
    return run_reduction(src, red, max_rows=max_rows, progress=progress, executor=executor)


srp.__memo_version__ = 2  # type: ignore[attr-defined]  # shuffled baseline seeded per sequence


# ---- SCH --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchSpec:
    """One `sch` call: the window statistics, or the lookahead caches, to count per chunk."""

    kind: str
    window: WindowSpec
    cache: CacheSpec | None  # lookahead: lookahead-L for every L, one 'all' phase


def _sch_empty(spec: SchSpec) -> dict:
    if spec.cache is None:
        return _window_empty(spec.window)
    orders = ("original",) if spec.window.seed is None else ("original", "shuffled")
    return {o: _empty_counts(spec.cache) for o in orders}


def _sch_kernel(spec: SchSpec, chunk: Trace) -> dict:
    if spec.cache is None:
        return _window_kernel(spec.window, chunk)
    w = spec.window
    if w.phase != "all":
        chunk = _phase_chunk(chunk, w.phase)
    out = {"original": _cache_kernel(spec.cache, chunk)}
    if w.seed is not None:
        out["shuffled"] = _cache_kernel(spec.cache, shuffled(chunk, w.seed))
    return out


def _phase_chunk(chunk: Trace, phase: str) -> Trace:
    """The chunk's `phase` tokens as a Trace whose sequences stay (some maybe empty)."""
    X, offsets = phase_requests(chunk, phase)
    return Trace(
        experts=X,
        weights=None,
        seq_offsets=offsets,
        num_experts=chunk.num_experts,
        top_k=chunk.top_k,
        layers=chunk.layers,
        seq_ids=chunk.seq_ids,
    )


def _sch_merge(a: dict, b: dict) -> dict:
    return {
        key: (_merge_counts(a[key], b[key]) if isinstance(a[key], CacheCounts) else a[key] + b[key])
        for key in a
    }


def _sch_finalize(info: SourceInfo, spec: SchSpec, caps: np.ndarray, acc: dict) -> pl.DataFrame:
    k = info.top_k
    w = spec.window
    layers: list[int | None] = [*info.layers, None]
    orders = ("original",) if w.seed is None else ("original", "shuffled")
    frames = []
    for order in orders:
        for i, seg in enumerate(w.segs):
            if spec.cache is None:
                _, S, W = _window_parts(acc[order, seg], seg)
                S = np.vstack([S, S.sum(axis=0, keepdims=True)])
                W = np.append(W, W.sum())
                top = np.cumsum(S, axis=1)[:, caps - 1]
                den = (k * seg * W).astype(np.float64)
            else:
                counts: CacheCounts = acc[order]
                hits = counts.hits["all"][i]
                top = np.vstack([hits, hits.sum(axis=0, keepdims=True)])
                reqs = counts.requests["all"]
                den = np.append(reqs, reqs.sum()).astype(np.float64)
            rate = np.where(den[:, None] > 0, top / np.maximum(den, 1)[:, None], np.nan)
            if spec.cache is not None and spec.cache.service == "simultaneous":
                kmax = acc[order].kmax["all"]
                rate = np.where((caps >= kmax)[None, :], rate, np.nan)
            frames.append(
                pl.DataFrame(
                    {
                        "layer": np.repeat(np.array(layers, dtype=object), len(caps)).tolist(),
                        "capacity": np.tile(caps, len(layers)),
                        "hit_rate": rate.reshape(-1),
                    },
                    schema_overrides={"layer": pl.Int64, "capacity": pl.Int64},
                ).with_columns(
                    pl.lit(seg, dtype=pl.Int64).alias("segment_length"),
                    pl.col("hit_rate").fill_nan(None),
                    pl.lit(order).alias("order"),
                )
            )
    out = pl.concat(frames)
    return out.with_columns(
        pl.lit(w.phase).alias("phase"),
        pl.lit(spec.kind).alias("kind"),
        (pl.col("capacity") / k).alias("rho"),
    ).select("phase", "kind", "order", "layer", "segment_length", "capacity", "rho", "hit_rate")


def sch_reduction(
    info: SourceInfo,
    segment_lengths: Iterable[int] = (4, 16, 64, 256),
    capacities: Iterable[int] | None = None,
    kind: str = "segment-oracle",
    service: str = "stream",
    start: str = "cold",
    phase: str = "all",
    shuffled_seed: int | None = None,
) -> Reduction:
    """`sch` as a `Reduction` (partial: window statistics, or lookahead-L cache counts)."""
    if kind not in SCH_KINDS:
        raise InvalidParameterError(f"unknown SCH kind {kind!r}; use segment-oracle or lookahead")
    window = _window_spec(info, segment_lengths, phase, shuffled_seed)
    caps = check_capacities(capacities, info.num_experts)
    cache = None
    if kind == "lookahead":
        if service not in SERVICES:
            raise InvalidParameterError(
                f"unknown service {service!r}; use one of {', '.join(SERVICES)}"
            )
        if start not in ("cold", "warm"):
            raise InvalidParameterError(f"unknown start {start!r}; use one of cold, warm")
        names = tuple(f"lookahead-{seg}" for seg in window.segs)
        cache = CacheSpec(
            names=names,
            policies=tuple(check_policies(list(names), service)),
            caps=tuple(int(c) for c in caps),
            scope="layer",
            service=service,
            start=start,
            granularity="token",
            phase="all",
            batch_size=1,
            layers=tuple(info.layers),
            num_experts=info.num_experts,
            top_k=info.top_k,
        )
    spec = SchSpec(kind=kind, window=window, cache=cache)
    return Reduction(
        kernel=partial(_sch_kernel, spec),
        merge=_sch_merge,
        finalize=partial(_sch_finalize, info, spec, caps),
        empty=partial(_sch_empty, spec),
        weights=False,
        name="SCH",
    )


def sch(
    data: Trace | TraceSource,
    segment_lengths: Iterable[int] = (4, 16, 64, 256),
    capacities: Iterable[int] | None = None,
    kind: str = "segment-oracle",
    service: str = "stream",
    start: str = "cold",
    phase: str = "all",
    labels: Sequence[str] | None = None,
    shuffled_seed: int | None = None,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Segment Cache best Hit rate per layer and pooled (layer null), C = 1..E, rho = C/k.

    `segment-oracle`: each window's cache holds its C most used experts (refilled once per
    segment); `lookahead`: the online lookahead-L cache of `cache_hit_rates` with the given
    service and start (the paper's published figures use service="token", start="warm").
    """
    if kind not in SCH_KINDS:
        raise InvalidParameterError(f"unknown SCH kind {kind!r}; use segment-oracle or lookahead")
    check_segment_lengths(segment_lengths)
    _check_phase(phase)
    src = select(data, labels)
    red = sch_reduction(
        src.info, segment_lengths, capacities, kind, service, start, phase, shuffled_seed
    )
    return run_reduction(src, red, max_rows=max_rows, progress=progress, executor=executor)


sch.__memo_version__ = 2  # type: ignore[attr-defined]  # shuffled baseline seeded per sequence
