"""Local routing consistency (DESIGN.md §4.1): repetition rates, SRP and SCH, exact.

Windows are every run of L consecutive tokens inside a sequence (stride 1); sequences shorter
than L contribute no window. One sliding pass per (layer, L) keeps the sorted multiset of
per-expert window counts under +-1 updates, so all thresholds c in 0..L (SRP) and all capacities
(segment-oracle SCH) come out of O(k) work per token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import comb

import numpy as np
import polars as pl

from routescope.analysis import _kernels as K
from routescope.analysis.cache import _chunks, cache_hit_rates, check_capacities
from routescope.core.errors import InvalidParameterError
from routescope.core.trace import Trace

SCH_KINDS = ("segment-oracle", "lookahead")


def check_segment_lengths(segment_lengths: Iterable[int]) -> list[int]:
    """Segment lengths as sorted unique ints >= 1; a clear error otherwise."""
    segs = sorted({int(s) for s in segment_lengths})
    if not segs:
        raise InvalidParameterError("no segment lengths given; pass at least one integer >= 1")
    if segs[0] < 1:
        raise InvalidParameterError(f"segment length {segs[0]} is invalid; use integers >= 1")
    return segs


def _select(trace: Trace, phase: str, labels: Sequence[str] | None) -> Trace:
    if phase not in ("all", "prefill", "decode"):
        raise InvalidParameterError(f"unknown phase {phase!r}; use one of all, prefill, decode")
    sub = trace.select_phase(phase)
    if labels:
        sub = sub.select_labels(list(labels))
    return sub


def shuffled(trace: Trace, seed: int = 0) -> Trace:
    """The same trace with token order permuted within each sequence (seeded).

    Keeps every sequence's load skew and removes its locality: the baseline for SRP/SCH.
    """
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(trace.num_tokens), trace.seq_index))
    return replace(trace, experts=trace.experts[order], weights=trace.weights[order])


def repetition_rates(
    trace: Trace, phase: str = "all", labels: Sequence[str] | None = None
) -> pl.DataFrame:
    """Per layer (and pooled, layer null): how often consecutive tokens repeat their routing.

    top1_repeat: the top-1 expert repeats (chance 1/E); top2_share: the top-2 sets share an
    expert (chance 1 - C(E-2,2)/C(E,2)); topk_overlap: mean |S_t ∩ S_{t-1}|/k (chance k/E).
    Pairs are consecutive token rows of the same sequence.
    """
    sub = _select(trace, phase, labels)
    E, k = sub.num_experts, sub.top_k
    ex = sub.experts.astype(np.int64)
    same_seq = np.ones(sub.num_tokens, dtype=bool)
    same_seq[sub.seq_offsets[:-1][sub.seq_lengths > 0]] = False
    cur, prev = ex[same_seq], ex[np.flatnonzero(same_seq) - 1]
    pairs = int(cur.shape[0])
    top1 = (cur[:, :, 0] == prev[:, :, 0]).sum(axis=0)
    if k >= 2:
        a, b = cur[:, :, :2], prev[:, :, :2]
        share = (a[:, :, :, None] == b[:, :, None, :]).any(axis=(2, 3)).sum(axis=0)
    else:
        share = np.zeros(sub.num_layers, dtype=np.int64)
    overlap = (cur[:, :, :, None] == prev[:, :, None, :]).any(axis=3).sum(axis=(0, 2))
    layers: list[int | None] = [*sub.layers, None]
    top1 = np.append(top1, top1.sum())
    share = np.append(share, share.sum())
    overlap = np.append(overlap, overlap.sum())
    n = np.array([pairs] * sub.num_layers + [pairs * sub.num_layers], dtype=np.float64)
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


def _window_arrays(trace: Trace, seg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X = np.ascontiguousarray(trace.experts, dtype=np.int32)
    offsets = np.ascontiguousarray(trace.seq_offsets, dtype=np.int64)
    chunks = _chunks(trace.num_sequences, trace.num_layers)
    return K.window_stats(X, offsets, chunks, trace.num_experts, seg)


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


def srp(
    trace: Trace,
    segment_lengths: Iterable[int] = (4, 16, 64, 256),
    pooled: bool = True,
    shuffled_seed: int | None = 0,
    phase: str = "all",
    labels: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Segment Routing best Performance per layer (and pooled over layers, layer null).

    Columns: segment_length, windows, srp, c_star, g_hat, floor (= 2r/(1+r), what c = 0 gives),
    and with a seed the shuffled-order baseline (srp_shuffled, g_hat_shuffled) and the gap.
    """
    segs = check_segment_lengths(segment_lengths)
    sub = _select(trace, phase, labels)
    E, k = sub.num_experts, sub.top_k
    r = k / E
    base = shuffled(sub, shuffled_seed) if shuffled_seed is not None else None
    rows: list[dict] = []
    for seg in segs:
        G, _, W = _window_arrays(sub, seg)
        Gs = _window_arrays(base, seg)[0] if base is not None else None
        cells: list[tuple[int | None, np.ndarray, np.ndarray | None, int]] = [
            (layer, G[i], None if Gs is None else Gs[i], int(W[i]))
            for i, layer in enumerate(sub.layers)
        ]
        if pooled:
            cells.append(
                (None, G.sum(axis=0), None if Gs is None else Gs.sum(axis=0), int(W.sum()))
            )
        for layer, g, gs, w in cells:
            val, c_star, g_hat, _ = srp_from_counts(g, seg, k)
            row = {
                "phase": phase,
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


def sch(
    trace: Trace,
    segment_lengths: Iterable[int] = (4, 16, 64, 256),
    capacities: Iterable[int] | None = None,
    kind: str = "segment-oracle",
    service: str = "stream",
    start: str = "cold",
    phase: str = "all",
    labels: Sequence[str] | None = None,
    shuffled_seed: int | None = None,
) -> pl.DataFrame:
    """Segment Cache best Hit rate per layer and pooled (layer null), C = 1..E, rho = C/k.

    `segment-oracle`: each window's cache holds its C most used experts (refilled once per
    segment); `lookahead`: the online lookahead-L cache of `cache_hit_rates` with the given
    service and start (the paper's published figures use service="token", start="warm").
    """
    if kind not in SCH_KINDS:
        raise InvalidParameterError(f"unknown SCH kind {kind!r}; use segment-oracle or lookahead")
    segs = check_segment_lengths(segment_lengths)
    sub = _select(trace, phase, labels)
    caps = check_capacities(capacities, sub.num_experts)
    k = sub.top_k
    frames = []
    variants = [("original", sub)]
    if shuffled_seed is not None:
        variants.append(("shuffled", shuffled(sub, shuffled_seed)))
    for order, tr in variants:
        for seg in segs:
            if kind == "segment-oracle":
                _, S, W = _window_arrays(tr, seg)
                S = np.vstack([S, S.sum(axis=0, keepdims=True)])
                W = np.append(W, W.sum())
                top = np.cumsum(S, axis=1)[:, caps - 1]
                den = (k * seg * W).astype(np.float64)
                rate = np.where(den[:, None] > 0, top / np.maximum(den, 1)[:, None], np.nan)
                layers: list[int | None] = [*tr.layers, None]
                frames.append(
                    pl.DataFrame(
                        {
                            "layer": np.repeat(np.array(layers, dtype=object), len(caps)).tolist(),
                            "capacity": np.tile(caps, len(layers)),
                            "hit_rate": rate.reshape(-1),
                        },
                        schema_overrides={"layer": pl.Int64},
                    ).with_columns(
                        pl.lit(seg, dtype=pl.Int64).alias("segment_length"),
                        pl.col("hit_rate").fill_nan(None),
                    )
                )
            else:
                df = cache_hit_rates(
                    tr,
                    policies=(f"lookahead-{seg}",),
                    capacities=caps,
                    service=service,
                    start=start,
                    phase="all",
                )
                frames.append(
                    df.select("layer", "capacity", "hit_rate").with_columns(
                        pl.lit(seg, dtype=pl.Int64).alias("segment_length")
                    )
                )
            frames[-1] = frames[-1].with_columns(pl.lit(order).alias("order"))
    out = pl.concat(frames)
    return out.with_columns(
        pl.lit(phase).alias("phase"),
        pl.lit(kind).alias("kind"),
        (pl.col("capacity") / k).alias("rho"),
    ).select("phase", "kind", "order", "layer", "segment_length", "capacity", "rho", "hit_rate")
