"""Expert-cache hit rates and their bounds (DESIGN.md §4.2), exact on every sequence.

A cache of C experts per MoE layer serves one sequence's requests (a token's k experts in rank
order). Policies LRU, LFU (counts over the sequence so far, ties to LRU), lookahead-L, Belady/MIN
and belady-bypass are priority algorithms whose priority order does not depend on C, so they have
the inclusion property under all three service models (under `simultaneous` the current token's
experts simply outrank every other resident): one pass computes every capacity from stack depths
(Mattson et al. 1970). FIFO is not a stack algorithm (Belady's anomaly) and is simulated once per
capacity. `static` is the best fixed placement, read off per-sequence request counts.

Service models:
- `stream`: demand paging over the flattened stream; a hit is decided at the access.
- `token`: the moe-lrc reference accounting: a token's hits are decided against the cache as it
  stood before the token; then its experts are served in rank order exactly as under `stream`
  (same cache states, priorities updated as each expert is served, a not-yet-served expert of the
  token may be evicted and re-admitted). Its "Belady" is that paper's convention, not a bound.
- `simultaneous`: all of a token's requests must be resident together; defined for capacities at
  least the largest request set (k per token), null below that.

Start: `cold`, or `warm` = the first request of each of a sequence's first C distinct experts
counts as a hit (as if preloaded). No admitting policy evicts before the cache is full, so warm
equals cold plus min(C, distinct experts) per sequence. `static` is always preloaded.

Scope: `layer` (a cache per MoE layer; plus a pooled row = all layers' hits over all their
requests), or `global`: one cache of C·#layers slots over (layer, expert) items, requested token by
token and within a token layer by layer; under `token`/`simultaneous` service one layer's request
set of one token is the unit whose hits are decided together.

Granularity: `token`, or `step`: sequences are grouped in batches of `batch_size` consecutive
sequences (trace order) and a step is one position across the batch's sequences, for prefill and
decode alike; a step requests the union of its tokens' experts and the cache serves one batch.
`batch_size` defaults to the run's recorded collection batch size (`trace.meta["batch_size"]`),
else 1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

from routescope.analysis import _kernels as K
from routescope.core.errors import InvalidParameterError
from routescope.core.trace import PHASES, Trace

DEFAULT_POLICIES = ("lru", "lfu", "fifo", "static", "lookahead-16", "belady", "belady-bypass")
SERVICES = {"stream": K.STREAM, "token": K.TOKEN, "simultaneous": K.SIMULTANEOUS}
STARTS = ("cold", "warm")
SCOPES = ("layer", "global")
GRANULARITIES = ("token", "step")
_STACK = {"lru": K.LRU, "lfu": K.LFU, "belady": K.BELADY, "belady-bypass": K.BYPASS}
_LOOKAHEAD = re.compile(r"^lookahead-(\d+)$")

SCHEMA = {
    "phase": pl.Utf8,
    "scope": pl.Utf8,
    "layer": pl.Int64,
    "policy": pl.Utf8,
    "service": pl.Utf8,
    "start": pl.Utf8,
    "granularity": pl.Utf8,
    "capacity": pl.Int64,
    "slots": pl.Int64,
    "rho": pl.Float64,
    "hits": pl.Int64,
    "requests": pl.Int64,
    "hit_rate": pl.Float64,
}


def parse_policy(name: str) -> tuple[str, int]:
    """Validate a policy name; returns (kind, lookahead window or 0)."""
    name = name.strip().lower()
    if name in _STACK or name in ("fifo", "static"):
        return name, 0
    m = _LOOKAHEAD.match(name)
    if m and int(m.group(1)) >= 1:
        return "lookahead", int(m.group(1))
    raise InvalidParameterError(
        f"unknown cache policy {name!r}; use lru, lfu, fifo, static, lookahead-<L> (L >= 1), "
        "belady or belady-bypass"
    )


def check_capacities(capacities: Iterable[int] | None, num_experts: int) -> np.ndarray:
    """Capacities in 1..E (default: all of them), sorted and unique."""
    if capacities is None:
        return np.arange(1, num_experts + 1, dtype=np.int64)
    caps = sorted({int(c) for c in capacities})
    if not caps:
        raise InvalidParameterError("no capacities given; pass at least one value in 1..E")
    bad = [c for c in caps if c < 1 or c > num_experts]
    if bad:
        raise InvalidParameterError(
            f"capacity {bad[0]} is outside 1..{num_experts} (the number of experts per layer)"
        )
    return np.asarray(caps, dtype=np.int64)


def _choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise InvalidParameterError(f"unknown {what} {value!r}; use one of {', '.join(allowed)}")
    return value


def _phases(trace: Trace, phase: str) -> list[tuple[str, Trace]]:
    """(name, sub-trace) pairs: 'split' = each phase present, apart; else the one asked for."""
    if phase == "split":
        out = [(p, trace.select_phase(p)) for p in PHASES if np.any(trace.phase == PHASES.index(p))]
        return out or [("all", trace)]
    _choice(phase, ("all", "split", *PHASES), "phase")
    sub = trace.select_phase(phase)
    if sub.num_tokens == 0:
        raise InvalidParameterError(f"this selection has no {phase} tokens; pick another phase")
    return [(phase, sub)]


def request_arrays(
    trace: Trace, scope: str = "layer", granularity: str = "token", batch_size: int = 1
) -> tuple[np.ndarray, np.ndarray, int]:
    """(X int32[rows, nL', K'] padded with -1, offsets, number of distinct items) to simulate.

    Global scope is one virtual layer whose items are (layer, expert) pairs, requested token by
    token and, within a token, layer by layer.
    """
    X = np.ascontiguousarray(trace.experts, dtype=np.int32)
    offsets = np.ascontiguousarray(trace.seq_offsets, dtype=np.int64)
    E = trace.num_experts
    if granularity == "step":
        if batch_size < 1:
            raise InvalidParameterError("batch size must be at least 1")
        X, offsets = K.step_requests(X, offsets, int(batch_size), E)
    if scope == "global":
        n, nl, k = X.shape
        shifted = X + (np.arange(nl, dtype=np.int32) * E)[None, :, None]
        X = np.where(X >= 0, shifted, -1).reshape(n * nl, 1, k).astype(np.int32)
        offsets = offsets * nl
        return np.ascontiguousarray(X), offsets, E * nl
    return X, offsets, E


def _chunks(num_seqs: int, num_layers: int) -> np.ndarray:
    n = max(1, min(num_seqs, 8 if num_layers >= 4 else 64))
    return K.chunk_bounds(num_seqs, n)


def distinct_hist(X: np.ndarray, offsets: np.ndarray, n_items: int) -> np.ndarray:
    """dist[l, D] = number of sequences whose layer-l requests name D distinct items."""
    n, nl, _ = X.shape
    seq = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    out = np.zeros((nl, n_items + 1), dtype=np.int64)
    for layer in range(nl):
        x = X[:, layer, :]
        valid = x >= 0
        keys = np.unique((seq[:, None] * n_items + x)[valid])
        per_seq = np.bincount(keys // n_items, minlength=len(offsets) - 1)
        out[layer] = np.bincount(per_seq, minlength=n_items + 1)[: n_items + 1]
    return out


def _warm_extra(dist: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """extra[l, i] = sum over sequences of min(slots[i], distinct items of the sequence)."""
    d = np.arange(dist.shape[1], dtype=np.int64)
    return (dist[:, None, :] * np.minimum(slots[:, None], d[None, :])[None]).sum(axis=2)


def simulate(
    X: np.ndarray,
    offsets: np.ndarray,
    n_items: int,
    policy: str,
    slots: np.ndarray,
    service: str = "stream",
    start: str = "cold",
) -> tuple[np.ndarray, np.ndarray]:
    """Hits[l, i] at cache sizes `slots` and requests[l] for one policy on request arrays."""
    kind, window = parse_policy(policy)
    svc = SERVICES[service]
    chunks = _chunks(len(offsets) - 1, X.shape[1])
    requests = (X >= 0).sum(axis=(0, 2)).astype(np.int64)
    if kind == "static":
        topc = K.static_topc(X, offsets, chunks, n_items)
        return topc[:, slots], requests
    if kind == "belady-bypass" and service == "simultaneous":
        raise InvalidParameterError(
            "belady-bypass is defined for stream and token service only; drop it for simultaneous"
        )
    if kind == "fifo":
        hits = K.fifo_hits(X, offsets, chunks, n_items, slots, svc)
        dist = distinct_hist(X, offsets, n_items) if start == "warm" else None
    else:
        code = K.LOOKAHEAD if kind == "lookahead" else _STACK[kind]
        hist, _, dist = K.stack_depths(X, offsets, chunks, n_items, code, svc, max(window, 1))
        hits = np.cumsum(hist[:, 1:], axis=1)[:, slots - 1]
    if start == "warm":
        hits = hits + _warm_extra(dist, slots)
    return hits, requests


def cache_hit_rates(
    trace: Trace,
    policies: Sequence[str] = DEFAULT_POLICIES,
    capacities: Iterable[int] | None = None,
    scope: str = "layer",
    service: str = "stream",
    start: str = "cold",
    granularity: str = "token",
    phase: str = "split",
    batch_size: int | None = None,
    progress: bool = False,
    labels: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Hit rate of each policy at each capacity C (experts per layer), long form.

    Rows per phase (`split` = prefill and decode apart), per layer plus a pooled row (layer null:
    all layers' hits over all their requests), or for `scope="global"` one cache of C·#layers
    slots shared by all layers (layer null, `slots` = C·#layers). `rho` = C/k.
    """
    _choice(scope, SCOPES, "scope")
    _choice(service, tuple(SERVICES), "service")
    _choice(start, STARTS, "start")
    _choice(granularity, GRANULARITIES, "granularity")
    for p in policies:
        parse_policy(p)
    if service == "simultaneous" and any(parse_policy(p)[0] == "belady-bypass" for p in policies):
        raise InvalidParameterError(
            "belady-bypass is defined for stream and token service only; drop it for simultaneous"
        )
    caps = check_capacities(capacities, trace.num_experts)
    if labels:
        trace = trace.select_labels(list(labels))
    bsz = int(batch_size if batch_size is not None else trace.meta.get("batch_size", 1) or 1)
    parts = _phases(trace, phase)
    frames: list[pl.DataFrame] = []
    jobs = [(name, sub, pol) for name, sub in parts for pol in policies]
    bar = _progress(progress, len(jobs), "cache policies")
    prepared: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    for name, sub, pol in jobs:
        if name not in prepared:
            prepared[name] = request_arrays(sub, scope, granularity, bsz)
        X, offsets, n_items = prepared[name]
        mult = sub.num_layers if scope == "global" else 1
        slots = caps * mult
        hits, reqs = simulate(X, offsets, n_items, pol, slots, service, start)
        kmax = int((X >= 0).sum(axis=2).max()) if X.size else 0
        feasible = slots >= kmax if service == "simultaneous" else np.ones(len(caps), bool)
        layer_ids: list[int | None]
        if scope == "global":
            layer_ids = [None]
        else:
            layer_ids = list(sub.layers)
            hits = np.vstack([hits, hits.sum(axis=0, keepdims=True)])
            reqs = np.append(reqs, reqs.sum())
            layer_ids.append(None)
        n_rows = len(layer_ids) * len(caps)
        rate = hits / np.maximum(reqs, 1)[:, None]
        rate = np.where(feasible[None, :], rate, np.nan)
        frames.append(
            pl.DataFrame(
                {
                    "phase": [name] * n_rows,
                    "scope": [scope] * n_rows,
                    "layer": np.repeat(np.array(layer_ids, dtype=object), len(caps)).tolist(),
                    "policy": [pol] * n_rows,
                    "service": [service] * n_rows,
                    "start": [start] * n_rows,
                    "granularity": [granularity] * n_rows,
                    "capacity": np.tile(caps, len(layer_ids)),
                    "slots": np.tile(slots, len(layer_ids)),
                    "rho": np.tile(caps / sub.top_k, len(layer_ids)),
                    "hits": hits.reshape(-1),
                    "requests": np.repeat(reqs, len(caps)),
                    "hit_rate": rate.reshape(-1),
                },
                schema=SCHEMA,
            ).with_columns(pl.col("hit_rate").fill_nan(None))
        )
        bar.advance()
    bar.close()
    return pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMA)


def belady_hit_rates(trace: Trace, **kwargs) -> pl.DataFrame:
    """Belady/MIN hit rates (the optimum of admitting policies under stream service)."""
    return cache_hit_rates(trace, policies=("belady",), **kwargs)


def lru_hit_rates(trace: Trace, **kwargs) -> pl.DataFrame:
    """LRU hit rates at every capacity, from one stack-distance pass."""
    return cache_hit_rates(trace, policies=("lru",), **kwargs)


class _progress:
    """A rich progress bar when enabled, a no-op otherwise."""

    def __init__(self, enabled: bool, total: int, what: str) -> None:
        self._p = None
        if enabled and total > 1:
            from rich.progress import Progress

            self._p = Progress(transient=True)
            self._p.start()
            self._task = self._p.add_task(what, total=total)

    def advance(self) -> None:
        if self._p is not None:
            self._p.advance(self._task)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
