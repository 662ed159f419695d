"""The offloading what-if (DESIGN §9): what a GPU memory budget buys in tokens per second.

Experts live in host memory; each MoE layer keeps a cache of C experts on the GPU under a policy
(LRU, LFU, FIFO, lookahead-L, Belady: the names of `routescope.analysis.policies`). Tokens are
served one at a time in sequence order (prefill tokens too, one by one; prefill and decode are
simulated as separate streams, like `analyze cache`, unless `phase="all"`), each token layer by
layer. The model of one token step at MoE layer l (DESIGN §9):

- when layer l starts, its routing is known; its experts are requested in rank order under
  `stream` service (a hit is decided at the access; a miss is loaded on demand and admitted,
  evicting per the policy any resident but the requested one);
- a predictor's top m experts for layer l are prefetched when layer l − d starts (d = the
  predictor's distance for `speculative-d` / `transition-d`, else `lead`), after that layer's
  own on-demand loads: each one not resident is loaded (in rank order) and admitted, the
  top-ranked counting as the most recently used, and stays pinned (not evictable) until layer l
  starts. Prefetches never reach back before the sequence's stream starts; predictors that need
  the same token's state (speculative, transition) are issued no earlier than the token's first
  MoE layer. Leads count MoE layers; recorded `speculative-d` rankings count model layers, which
  is the same wherever MoE layers are consecutive (dense layers before the first MoE layer, as
  in DeepSeek-V3, only mean the first MoE layers' rankings are issued at the token's start);
- one host→device link of `bandwidth_gbps` carries every load, first come first served (an
  on-demand load waits behind earlier prefetches): a load of `expert_bytes` takes
  expert_bytes / B;
- the layer's compute starts when all its experts have arrived: stall_l = max(0, arrival of the
  last − start); time per token = Σ_l (compute_l + stall_l) + `other_ms` (dense layers, LM
  head). A prefetch thus overlaps with the compute of the layers between its issue and its use;
  on-demand loads overlap with nothing.

Cache decisions do not depend on timing (every event's order is fixed), so `m = 0` gives exactly
the hit counts of `cache_hit_rates(service="stream", start="cold")`, and for LRU a larger cache
is never slower (inclusion: its loads are a subset, on the same first-come-first-served link).
Prefetch widths must fit the cache (C >= m); smaller caches get only the cache-only row.
Each sequence's stream starts cold (or, with `start="warm"`, with each layer's cache holding
the first C distinct experts the stream requests, at no cost: `analyze cache`'s warm start, so
m = 0 then gives its warm hit counts). GPU memory = C × MoE layers × expert bytes + non-expert
bytes. Two limits come with every result: `all-resident` (every expert preloaded: compute bound)
and `no-cache` (every request loaded on demand: compute + requests × load time).

Times are integer picoseconds inside (each duration rounded once), so partials are integer sums
and the result does not depend on how the run is cut (DESIGN §7).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import polars as pl
from numba import njit, prange

from routescope.analysis import policies as cache_policies
from routescope.analysis import prefetch as pf
from routescope.analysis.streaming import Executor, Progress, Reduction, add_arrays, run_reduction
from routescope.core.costs import (  # noqa: F401 (the cost model is offered here too)
    DEFAULT_BANDWIDTH_GBPS,
    DEFAULT_TFLOPS,
    PS,
    ModelDims,
    OffloadCost,
    model_cost,
)
from routescope.core.errors import InvalidParameterError
from routescope.core.source import DEFAULT_CHUNK_ROWS, SourceInfo, TraceSource, as_source
from routescope.core.trace import PHASES, Trace

DEFAULT_POLICIES = ("lru", "lfu", "belady")
PHASE_CHOICES = ("split", "all", *PHASES)
#: cold: each stream's caches start empty; warm: each layer's cache starts holding the first C
#: distinct experts the stream will request (as if preloaded; `analyze cache`'s warm start)
STARTS = ("cold", "warm")

# policy codes of the simulator
LRU, LFU, FIFO, LOOKAHEAD, BELADY = 0, 1, 2, 3, 4
_CODES = {"lru": LRU, "lfu": LFU, "fifo": FIFO, "lookahead-<L>": LOOKAHEAD, "belady": BELADY}
_SHIFT = np.int64(1) << np.int64(36)
_INF = np.int64(1) << np.int64(60)
_BOOST = np.int64(1) << np.int64(62)

# stats of one stream, in order
STATS = (
    "tokens",
    "time_ps",
    "stall_ps",
    "requests",
    "hits",
    "demand_loads",
    "prefetch_issued",
    "prefetch_loads",
    "useful_prefetches",
)
_NSTAT = len(STATS)


# ---- the simulator kernel --------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _key(policy, lay, e, t, last, cnt, adm, win, mark, nu, pin):
    """Priority of resident e at layer lay (higher = keep); pinned prefetches outrank all."""
    if policy == LRU:
        k = last[lay, e]
    elif policy == LFU:
        k = cnt[lay, e] * _SHIFT + last[lay, e]
    elif policy == FIFO:
        k = adm[lay, e]
    elif policy == LOOKAHEAD:
        c = win[lay, e]
        if mark[lay, e] == t:
            c -= 1
        k = c * _SHIFT + last[lay, e]
    else:
        k = _INF - nu[lay, e]
    if pin[lay, e]:
        k += _BOOST
    return k


@njit(cache=True, inline="always")
def _evict(policy, lay, t, res, nres, where, last, cnt, adm, win, mark, nu, pin, fromp):
    """Remove the lowest-priority resident of layer lay."""
    bi = 0
    bk = _key(policy, lay, res[lay, 0], t, last, cnt, adm, win, mark, nu, pin)
    for i in range(1, nres[lay]):
        kk = _key(policy, lay, res[lay, i], t, last, cnt, adm, win, mark, nu, pin)
        if kk < bk:
            bk = kk
            bi = i
    victim = res[lay, bi]
    nres[lay] -= 1
    moved = res[lay, nres[lay]]
    res[lay, bi] = moved
    where[lay, moved] = bi
    where[lay, victim] = -1
    fromp[lay, victim] = False
    pin[lay, victim] = False


@njit(cache=True, inline="always")
def _slide(X, a, T, lay, t, window, win, wstart):
    """Lookahead: move layer lay's window of request counts to start at token t."""
    while wstart[lay] < t:
        u = wstart[lay]
        for j in range(X.shape[2]):
            e = X[a + u, lay, j]
            if e >= 0:
                win[lay, e] -= 1
        v = u + window
        if v < T:
            for j in range(X.shape[2]):
                e = X[a + v, lay, j]
                if e >= 0:
                    win[lay, e] += 1
        wstart[lay] += 1


@njit(cache=True, inline="always")
def _issue(
    P, a, T, t2, lay, m, stride, policy, window, cap, load_ps, X, clock, st,
    res, nres, where, last, cnt, adm, win, mark, nu, pin, fromp, avail, wstart, pend, npend,
):  # fmt: skip
    """Prefetch the top m predicted experts of (token t2, layer lay): loaded in rank order, the
    top-ranked stamped as the most recently used."""
    row = a + t2
    if policy == LOOKAHEAD:
        _slide(X, a, T, lay, t2, window, win, wstart)
    for i in range(npend[lay]):
        pin[lay, pend[lay, i]] = False
    npend[lay] = 0
    for r in range(m):
        e = P[row, lay, r]
        if e < 0:
            continue
        st[6] += 1
        stamp = t2 * stride + (m - 1 - r)
        last[lay, e] = stamp
        if where[lay, e] < 0:
            if nres[lay] == cap:
                _evict(policy, lay, t2, res, nres, where, last, cnt, adm, win, mark, nu, pin, fromp)
            where[lay, e] = nres[lay]
            res[lay, nres[lay]] = e
            nres[lay] += 1
            adm[lay, e] = stamp
            fromp[lay, e] = True
            start = max(clock[0], clock[1])
            clock[1] = start + load_ps
            avail[lay, e] = clock[1]
            st[7] += 1
        pin[lay, e] = True
        pend[lay, npend[lay]] = e
        npend[lay] += 1


@njit(cache=True, parallel=True)
def _simulate(
    X, P, offsets, chunks, n_items, policy, window, cap, m, lead, same_token,
    layer_ps, other_ps, load_ps, warm,
):  # fmt: skip
    """Simulate every sequence's stream; returns stats int64[len(chunks) - 1, len(STATS)]."""
    n, nl, kk = X.shape
    n_chunks = len(chunks) - 1
    out = np.zeros((n_chunks, _NSTAT), dtype=np.int64)
    max_len = 0
    for s in range(len(offsets) - 1):
        max_len = max(max_len, offsets[s + 1] - offsets[s])
    stride = m + kk
    for ch in prange(n_chunks):
        where = np.full((nl, n_items), -1, dtype=np.int64)
        res = np.zeros((nl, max(cap, 1)), dtype=np.int64)
        nres = np.zeros(nl, dtype=np.int64)
        last = np.zeros((nl, n_items), dtype=np.int64)
        cnt = np.zeros((nl, n_items), dtype=np.int64)
        adm = np.zeros((nl, n_items), dtype=np.int64)
        win = np.zeros((nl, n_items), dtype=np.int64)
        mark = np.full((nl, n_items), -1, dtype=np.int64)
        nu = np.full((nl, n_items), _INF, dtype=np.int64)
        pin = np.zeros((nl, n_items), dtype=np.bool_)
        fromp = np.zeros((nl, n_items), dtype=np.bool_)
        avail = np.zeros((nl, n_items), dtype=np.int64)
        wstart = np.zeros(nl, dtype=np.int64)
        pend = np.zeros((nl, max(m, 1)), dtype=np.int64)
        npend = np.zeros(nl, dtype=np.int64)
        seen = np.full(n_items, -1, dtype=np.int64)
        nxt = np.zeros(max(1, max_len * nl * kk), dtype=np.int64)
        st = np.zeros(_NSTAT, dtype=np.int64)
        clock = np.zeros(2, dtype=np.int64)  # [now, link free at]
        for s in range(chunks[ch], chunks[ch + 1]):
            a, b = offsets[s], offsets[s + 1]
            T = b - a
            if T == 0:
                continue
            for lay in range(nl):
                for i in range(nres[lay]):
                    where[lay, res[lay, i]] = -1
                nres[lay] = 0
                npend[lay] = 0
                wstart[lay] = 0
                for e in range(n_items):
                    last[lay, e] = 0
                    cnt[lay, e] = 0
                    adm[lay, e] = 0
                    win[lay, e] = 0
                    mark[lay, e] = -1
                    nu[lay, e] = _INF
                    pin[lay, e] = False
                    fromp[lay, e] = False
                if policy == BELADY:  # next request of every request, first request of each e
                    for e in range(n_items):
                        seen[e] = -1
                    for i in range(T * kk - 1, -1, -1):
                        t = i // kk
                        e = X[a + t, lay, i % kk]
                        if e >= 0:
                            nxt[(t * nl + lay) * kk + i % kk] = _INF if seen[e] < 0 else seen[e]
                            seen[e] = i
                    for e in range(n_items):
                        if seen[e] >= 0:
                            nu[lay, e] = seen[e]
                if policy == LOOKAHEAD:
                    for u in range(min(window, T)):
                        for j in range(kk):
                            e = X[a + u, lay, j]
                            if e >= 0:
                                win[lay, e] += 1
                if warm:  # preloaded: the layer's first C distinct experts, in first-use order
                    for i in range(T * kk):
                        if nres[lay] == cap:
                            break
                        e = X[a + i // kk, lay, i % kk]
                        if e < 0 or where[lay, e] >= 0:
                            continue
                        where[lay, e] = nres[lay]
                        res[lay, nres[lay]] = e
                        # never used yet: older than every use, the latest first use oldest;
                        # admitted (FIFO) in first-use order, as a cold cache would have
                        last[lay, e] = -1 - nres[lay]
                        adm[lay, e] = nres[lay] - cap
                        avail[lay, e] = 0
                        nres[lay] += 1
            clock[0] = 0
            clock[1] = 0
            steps = T * nl
            stall = 0
            for g in range(steps):
                t = g // nl
                lay = g % nl
                # prefetches whose issue point lies before the stream (or the token) starts
                if m > 0 and lead > 0:
                    if same_token:
                        if lay == 0:
                            for l2 in range(min(lead, nl)):
                                _issue(
                                    P, a, T, t, l2, m, stride, policy, window, cap, load_ps, X,
                                    clock, st, res, nres, where, last, cnt, adm, win, mark, nu,
                                    pin, fromp, avail, wstart, pend, npend,
                                )  # fmt: skip
                    elif g == 0:
                        for tau in range(min(lead, steps)):
                            _issue(
                                P, a, T, tau // nl, tau % nl, m, stride, policy, window, cap,
                                load_ps, X, clock, st, res, nres, where, last, cnt, adm, win,
                                mark, nu, pin, fromp, avail, wstart, pend, npend,
                            )  # fmt: skip
                # the layer's own experts
                for i in range(npend[lay]):
                    pin[lay, pend[lay, i]] = False
                npend[lay] = 0
                if policy == LOOKAHEAD:
                    _slide(X, a, T, lay, t, window, win, wstart)
                now = clock[0]
                ready = now
                for j in range(kk):
                    e = X[a + t, lay, j]
                    if e < 0:
                        continue
                    st[3] += 1
                    stamp = t * stride + m + j
                    mark[lay, e] = t
                    last[lay, e] = stamp
                    cnt[lay, e] += 1
                    if policy == BELADY:
                        nu[lay, e] = nxt[(t * nl + lay) * kk + j]
                    if where[lay, e] >= 0:
                        st[4] += 1
                        if avail[lay, e] > ready:
                            ready = avail[lay, e]
                        if fromp[lay, e]:
                            st[8] += 1
                            fromp[lay, e] = False
                    else:
                        if nres[lay] == cap:
                            _evict(
                                policy, lay, t, res, nres, where, last, cnt, adm, win, mark, nu,
                                pin, fromp,
                            )  # fmt: skip
                        where[lay, e] = nres[lay]
                        res[lay, nres[lay]] = e
                        nres[lay] += 1
                        adm[lay, e] = stamp
                        fromp[lay, e] = False
                        start = max(now, clock[1])
                        clock[1] = start + load_ps
                        avail[lay, e] = clock[1]
                        if clock[1] > ready:
                            ready = clock[1]
                        st[5] += 1
                stall += ready - now
                clock[0] = ready
                # the prefetch issued as this layer starts, for `lead` layers ahead
                tg = g + lead
                if m > 0 and lead > 0 and tg < steps:
                    t2 = tg // nl
                    if (not same_token) or t2 == t:
                        _issue(
                            P, a, T, t2, tg % nl, m, stride, policy, window, cap, load_ps, X,
                            clock, st, res, nres, where, last, cnt, adm, win, mark, nu, pin,
                            fromp, avail, wstart, pend, npend,
                        )  # fmt: skip
                clock[0] += layer_ps[lay]
                if lay == nl - 1:
                    clock[0] += other_ps
            st[0] += T
            st[1] += clock[0]
            st[2] += stall
        for i in range(_NSTAT):
            out[ch, i] = st[i]
    return out


def simulate_stream(
    X: np.ndarray,
    offsets: np.ndarray,
    n_items: int,
    policy: str,
    capacity: int,
    cost: OffloadCost,
    predictions: np.ndarray | None = None,
    width: int = 0,
    lead: int = 1,
    same_token: bool = False,
    start: str = "cold",
) -> dict[str, int]:
    """One policy at one capacity over request arrays X int[N, L, k] (rank order, -1 padding)
    with sequence `offsets`; `predictions` int[N, L, >= width] (rank order, -1 = none) are
    prefetched `lead` layers ahead; `start` 'warm' preloads each layer's first C distinct
    experts of every stream. Returns the summed STATS of every sequence's stream."""
    code, window = _policy_code(policy)
    check_start(start)
    X = np.ascontiguousarray(X, dtype=np.int32)
    n, nl, _ = X.shape
    if width > 0:
        if predictions is None:
            raise InvalidParameterError("a prefetch width needs predictions")
        if capacity < width:
            raise InvalidParameterError(
                f"capacity {capacity} is below the prefetch width {width}: prefetches must fit"
            )
        P = np.ascontiguousarray(predictions, dtype=np.int32)
    else:
        P = np.full((n, nl, 1), -1, dtype=np.int32)
    if not 1 <= lead <= max(1, nl):
        raise InvalidParameterError(f"lead {lead} must lie in 1..{nl} (the MoE layers)")
    if capacity < 1:
        raise InvalidParameterError("capacity must be at least 1 expert per layer")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    n_seq = len(offsets) - 1
    chunks = np.linspace(0, n_seq, max(1, min(n_seq, 8)) + 1).round().astype(np.int64)
    stats = _simulate(
        X,
        P,
        offsets,
        chunks,
        int(n_items),
        code,
        window,
        int(capacity),
        int(width),
        int(lead),
        bool(same_token),
        cost.layer_ps(nl),
        cost.other_ps,
        cost.load_ps,
        start == "warm",
    ).sum(axis=0)
    return dict(zip(STATS, (int(x) for x in stats), strict=True))


def _policy_code(name: str) -> tuple[int, int]:
    """(simulator code, lookahead window) of a registered cache policy name."""
    policy, param = cache_policies.get_policy(name)
    if policy.name not in _CODES:
        supported = ", ".join(n.replace("<L>", "<L>") for n in _CODES)
        raise InvalidParameterError(
            f"cache policy {name!r} is not simulated by the offload what-if (it "
            f"{'never admits' if policy.admission == 'none' else 'may decline to admit'}); "
            f"use {supported}"
        )
    return _CODES[policy.name], max(1, param)


def check_start(start: str) -> str:
    if start not in STARTS:
        raise InvalidParameterError(f"unknown start {start!r}; use one of {', '.join(STARTS)}")
    return start


def check_policies(policies: Sequence[str]) -> tuple[str, ...]:
    """Policy names, each one the simulator runs (one clear error otherwise)."""
    if not policies:
        raise InvalidParameterError("no policies given; e.g. lru,belady")
    names = tuple(p.strip().lower() for p in policies)
    for p in names:
        _policy_code(p)
    return names


def default_capacities(num_experts: int, top_k: int) -> tuple[int, ...]:
    """About nine cache sizes from k/2 to E, evenly spread on a log scale."""
    lo = max(1, top_k // 2)
    return tuple(sorted({int(round(x)) for x in np.geomspace(lo, num_experts, 9)}))


def check_capacities(capacities: Iterable[int] | None, info: SourceInfo) -> tuple[int, ...]:
    if capacities is None:
        return default_capacities(info.num_experts, info.top_k)
    caps = sorted({int(c) for c in capacities})
    if not caps:
        raise InvalidParameterError("no capacities given; pass at least one value in 1..E")
    bad = [c for c in caps if c < 1 or c > info.num_experts]
    if bad:
        raise InvalidParameterError(
            f"capacity {bad[0]} is outside 1..{info.num_experts} (the number of experts per layer)"
        )
    return tuple(caps)


# ---- the reduction ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimConfig:
    """One simulated configuration: policy, predictor (None: cache only), width, lead, capacity."""

    policy: str
    code: int
    window: int
    predictor: int | None  # index into OffloadSpec.specs
    width: int
    lead: int
    capacity: int


@dataclass(frozen=True)
class OffloadSpec:
    configs: tuple[SimConfig, ...]
    specs: tuple[pf.PredictorSpec, ...]
    streams: tuple[str, ...]
    heldout: bool
    train_split: float
    fitted: pf.TransitionFit | None
    cost: OffloadCost
    n_layers: int
    num_experts: int
    top_k: int
    max_width: int = field(default=0)
    warm: bool = False


def _stream_rows(
    chunk: Trace, stream: str, heldout: bool, train_split: float
) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, offsets) of the chunk's tokens in `stream` ('all' or a phase), on held-out
    sequences only when asked; sequences keep their place (empty ones stay)."""
    keep = np.ones(chunk.num_tokens, dtype=bool)
    if stream != "all":
        keep &= chunk.phase == PHASES.index(stream)
    if heldout:
        keep &= np.repeat(~pf.is_train(chunk.seq_ids, train_split), chunk.seq_lengths)
    kept = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    return np.flatnonzero(keep), np.ascontiguousarray(kept[chunk.seq_offsets], dtype=np.int64)


def _sim_empty(spec: OffloadSpec) -> dict[str, np.ndarray]:
    ns = len(spec.streams)
    return {
        "stats": np.zeros((len(spec.configs), ns, _NSTAT), dtype=np.int64),
        "requests": np.zeros(ns, dtype=np.int64),
        "tokens": np.zeros(ns, dtype=np.int64),
    }


def _sim_kernel(spec: OffloadSpec, chunk: Trace) -> dict[str, np.ndarray]:
    out = _sim_empty(spec)
    if chunk.num_tokens == 0:
        return out
    X_all = np.ascontiguousarray(chunk.experts, dtype=np.int32)
    preds = {
        i: pf.predict(chunk, s, spec.max_width, spec.fitted)
        for i, s in enumerate(spec.specs)
        if spec.max_width > 0
    }
    layer_ps = spec.cost.layer_ps(spec.n_layers)
    dummy = None
    for si, stream in enumerate(spec.streams):
        rows, offsets = _stream_rows(chunk, stream, spec.heldout, spec.train_split)
        if len(rows) == 0:
            continue
        X = np.ascontiguousarray(X_all[rows])
        out["tokens"][si] = len(rows)
        out["requests"][si] = int((X >= 0).sum())
        n_seq = len(offsets) - 1
        chunks = np.linspace(0, n_seq, max(1, min(n_seq, 8)) + 1).round().astype(np.int64)
        sub = {i: np.ascontiguousarray(p[rows]) for i, p in preds.items()}
        for ci, cfg in enumerate(spec.configs):
            if cfg.predictor is None:
                if dummy is None or dummy.shape[0] != len(rows):
                    dummy = np.full((len(rows), spec.n_layers, 1), -1, dtype=np.int32)
                P, same = dummy, False
            else:
                P, same = sub[cfg.predictor], spec.specs[cfg.predictor].predictor.same_token
            out["stats"][ci, si] = _simulate(
                X,
                P,
                offsets,
                chunks,
                spec.num_experts,
                cfg.code,
                cfg.window,
                cfg.capacity,
                cfg.width,
                cfg.lead,
                same,
                layer_ps,
                spec.cost.other_ps,
                spec.cost.load_ps,
                spec.warm,
            ).sum(axis=0)
    return out


SCHEMA = {
    "phase": pl.Utf8,
    "kind": pl.Utf8,
    "policy": pl.Utf8,
    "predictor": pl.Utf8,
    "lead": pl.Int64,
    "width": pl.Int64,
    "capacity": pl.Int64,
    "memory_gb": pl.Float64,
    "tokens": pl.Int64,
    "requests": pl.Int64,
    "hits": pl.Int64,
    "hit_rate": pl.Float64,
    "demand_loads": pl.Int64,
    "prefetch_issued": pl.Int64,
    "prefetch_loads": pl.Int64,
    "useful_prefetches": pl.Int64,
    "time_s": pl.Float64,
    "compute_s": pl.Float64,
    "stall_s": pl.Float64,
    "ms_per_token": pl.Float64,
    "tokens_per_s": pl.Float64,
    "evaluated_on": pl.Utf8,
    "start": pl.Utf8,
}


def _sim_finalize(spec: OffloadSpec, phase: str, acc: dict[str, np.ndarray]) -> pl.DataFrame:
    cost = spec.cost
    per_token_ps = int(cost.layer_ps(spec.n_layers).sum()) + cost.other_ps
    streams = list(enumerate(spec.streams))
    if phase == "split":
        present = [(i, s) for i, s in streams if acc["tokens"][i] > 0]
        streams = present or streams[:1]
    elif acc["tokens"].sum() == 0 and phase != "all":
        raise InvalidParameterError(f"this selection has no {phase} tokens; pick another phase")
    rows: dict[str, list] = {name: [] for name in SCHEMA}
    gb = 1e9
    expert_gb = spec.n_layers * cost.expert_bytes / gb
    nonexpert_gb = cost.nonexpert_bytes / gb
    evaluated = "held-out" if spec.heldout else "all"

    def add(ph: str, kind: str, values: dict[str, Any]) -> None:
        tokens = values["tokens"]
        time_ps = values["time_ps"]
        for name in SCHEMA:
            rows[name].append(values.get(name))
        rows["phase"][-1] = ph
        rows["kind"][-1] = kind
        rows["time_s"][-1] = time_ps / PS
        rows["compute_s"][-1] = tokens * per_token_ps / PS
        rows["stall_s"][-1] = values["stall_ps"] / PS
        rows["ms_per_token"][-1] = time_ps / PS * 1e3 / tokens if tokens else None
        rows["tokens_per_s"][-1] = tokens / (time_ps / PS) if time_ps else None
        reqs = values["requests"]
        rows["hit_rate"][-1] = values["hits"] / reqs if reqs else None
        rows["evaluated_on"][-1] = evaluated
        rows["start"][-1] = "warm" if spec.warm else "cold"

    for si, ph in streams:
        tokens = int(acc["tokens"][si])
        reqs = int(acc["requests"][si])
        compute = tokens * per_token_ps
        for ci, cfg in enumerate(spec.configs):
            st = dict(zip(STATS, (int(x) for x in acc["stats"][ci, si]), strict=True))
            pred = "none" if cfg.predictor is None else spec.specs[cfg.predictor].name
            add(
                ph,
                "simulated",
                {
                    **st,
                    "policy": cfg.policy,
                    "predictor": pred,
                    "lead": cfg.lead if cfg.predictor is not None else None,
                    "width": cfg.width,
                    "capacity": cfg.capacity,
                    "memory_gb": cfg.capacity * expert_gb + nonexpert_gb,
                },
            )
        limits = {
            "all-resident": (compute, 0, reqs, 0, spec.num_experts),
            "no-cache": (compute + reqs * cost.load_ps, reqs * cost.load_ps, 0, reqs, 0),
        }
        for name, (time_ps, stall_ps, hits, loads, cap) in limits.items():
            add(
                ph,
                "limit",
                {
                    "tokens": tokens,
                    "time_ps": time_ps,
                    "stall_ps": stall_ps,
                    "requests": reqs,
                    "hits": hits,
                    "demand_loads": loads,
                    "prefetch_issued": 0,
                    "prefetch_loads": 0,
                    "useful_prefetches": 0,
                    "policy": name,
                    "predictor": None,
                    "lead": None,
                    "width": 0,
                    "capacity": cap,
                    "memory_gb": cap * expert_gb + nonexpert_gb,
                },
            )
    return pl.DataFrame(rows, schema=SCHEMA)


def offload_reduction(
    info: SourceInfo,
    cost: OffloadCost,
    specs: Sequence[pf.PredictorSpec],
    policies: Sequence[str] = DEFAULT_POLICIES,
    widths: Sequence[int] | None = None,
    lead: int = 1,
    capacities: Iterable[int] | None = None,
    phase: str = "split",
    train_split: float = pf.DEFAULT_TRAIN_SPLIT,
    fitted: pf.TransitionFit | None = None,
    start: str = "cold",
) -> Reduction[dict[str, np.ndarray], pl.DataFrame]:
    """The what-if as a `Reduction` over whole sequences with all their layers (validated here).

    Configurations: every policy × capacity cache-only (predictor 'none', m = 0), and every
    policy × predictor spec × width m × capacity C >= m with prefetch.
    """
    if phase not in PHASE_CHOICES:
        raise InvalidParameterError(
            f"unknown phase {phase!r}; use one of {', '.join(PHASE_CHOICES)}"
        )
    n_layers = len(info.layers)
    if not 1 <= int(lead) <= n_layers:
        raise InvalidParameterError(f"lead {lead} must lie in 1..{n_layers} (the run's MoE layers)")
    pols = check_policies(policies)
    caps = check_capacities(capacities, info)
    ws = pf.check_widths(widths if widths is not None else (info.top_k,), info) if specs else ()
    for s in specs:
        if s.distance is not None and s.distance > n_layers:
            raise InvalidParameterError(
                f"{s.name}: distance {s.distance} exceeds the run's {n_layers} MoE layers"
            )
    if any(s.fitted for s in specs) and fitted is None:
        raise InvalidParameterError("a fitted predictor needs its fit (run fit_transition first)")
    configs = []
    for pol in pols:
        code, window = _policy_code(pol)
        for c in caps:
            configs.append(SimConfig(pol, code, window, None, 0, 0, c))
        for i, s in enumerate(specs):
            d = int(s.distance) if s.distance is not None else int(lead)
            for m in ws:
                for c in caps:
                    if c >= m:
                        configs.append(SimConfig(pol, code, window, i, int(m), d, c))
    if phase == "split":
        streams: tuple[str, ...] = PHASES
    else:
        streams = (phase,)
    spec = OffloadSpec(
        configs=tuple(configs),
        specs=tuple(specs),
        streams=streams,
        heldout=any(s.fitted for s in specs),
        train_split=pf.check_train_split(train_split),
        fitted=fitted,
        cost=cost,
        n_layers=n_layers,
        num_experts=info.num_experts,
        top_k=info.top_k,
        max_width=max(ws, default=0),
        warm=check_start(start) == "warm",
    )
    return Reduction(
        kernel=partial(_sim_kernel, spec),
        merge=add_arrays,
        finalize=partial(_sim_finalize, spec, phase),
        empty=partial(_sim_empty, spec),
        speculative=pf.needs_speculative(specs),
        name="offload what-if",
    )


def offload_whatif(
    data: Trace | TraceSource,
    cost: OffloadCost,
    policies: Sequence[str] = DEFAULT_POLICIES,
    predictors: Sequence[str] | None = None,
    widths: Sequence[int] | None = None,
    lead: int = 1,
    capacities: Iterable[int] | None = None,
    phase: str = "split",
    train_split: float = pf.DEFAULT_TRAIN_SPLIT,
    start: str = "cold",
    labels: Sequence[str] | None = None,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Tokens/s against GPU memory for each policy × predictor × width × capacity, long form,
    with the `all-resident` and `no-cache` limits (kind 'limit') per phase.

    `cost`: expert/non-expert bytes, link bandwidth and compute times (`model_cost` builds it
    from the run's model config). `predictors`: registry names of `routescope.analysis.prefetch`
    (default: previous-token, the recorded speculative-`lead` when there is one, and oracle);
    `speculative-d` and `transition-d` prefetch d layers ahead, the others `lead` layers ahead.
    `widths`: prefetch widths m (default k). With a fitted predictor (transition), every
    configuration is simulated on the held-out sequences only (`train_split`, by id hash).
    `start`: 'cold' (each stream's caches empty) or 'warm' (each layer's cache preloaded with
    the first C distinct experts the stream requests: a server whose cache already holds the
    experts in use, without the per-sequence cold misses of short sequences).
    """
    src = as_source(data)
    if labels:
        src = src.select(labels=list(labels))
    info = src.info
    if predictors is None:
        names = ["previous-token", "oracle"]
        if info.speculative_distances:
            names.insert(1, f"speculative-{min(int(lead), info.speculative_distances)}")
    else:
        names = list(predictors)
    names = [n for n in names if n.strip().lower() != "none"]
    specs = pf.resolve_predictors(names, [int(lead)], info) if names else []
    passes = 2 if any(s.fitted for s in specs) else 1
    fitted = pf.fit_if_needed(
        src,
        specs,
        train_split,
        max_rows=max_rows,
        progress=pf.pass_progress(progress, 0, passes),
        executor=executor,
    )
    red = offload_reduction(
        info, cost, specs, policies, widths, lead, capacities, phase, train_split, fitted, start
    )
    return run_reduction(
        src,
        red,
        max_rows=max_rows,
        progress=pf.pass_progress(progress, passes - 1, passes),
        executor=executor,
    )
