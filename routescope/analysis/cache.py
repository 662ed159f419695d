"""Expert-cache hit rates and their bounds (DESIGN.md §4.2), exact on every sequence, streamed.

A cache of C experts per MoE layer serves one sequence's requests (a token's k experts in rank
order). The policies are the table in `routescope.analysis.policies` (LRU, LFU, FIFO, static,
lookahead-L, Belady/MIN, belady-bypass, and whatever is registered there). The priority policies
(LRU, LFU with counts over the sequence so far and ties to LRU, lookahead-L, Belady,
belady-bypass) have the inclusion property under all three service models (under `simultaneous`
the current token's experts simply outrank every other resident): one pass computes every
capacity from stack depths (Mattson et al. 1970). FIFO is not a stack algorithm (Belady's
anomaly) and is simulated once per capacity. `static` is the best fixed placement, read off
per-sequence request counts.

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

Granularity: `token`, or `step`: the sequences (after any label selection, in source order) are
grouped in batches of `batch_size` consecutive sequences and a step is one position across the
batch's sequences, for prefill and decode alike (a batch's decode steps are its sequences' decode
tokens, by index); a step requests the union of its tokens' experts and the cache serves one batch.
`batch_size` defaults to the run's recorded collection batch size (`meta["batch_size"]`), else 1.

Streaming (DESIGN §7): every cache serves one sequence (or one batch of sequences), so the run is
read in chunks of whole sequences (at batch boundaries for steps; all layers together, which the
global cache needs) and the partial result is integer hit and request counts; rates come last.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import polars as pl

from routescope.analysis import _kernels as K
from routescope.analysis.policies import (
    SERVICES,
    CachePolicy,
    Requests,
    default_policies,
    get_policy,
)
from routescope.analysis.streaming import Executor, Progress, Reduction, run_reduction
from routescope.core.errors import InvalidParameterError
from routescope.core.source import DEFAULT_CHUNK_ROWS, SourceInfo, TraceSource, as_source
from routescope.core.trace import PHASES, Trace

DEFAULT_POLICIES = default_policies()
STARTS = ("cold", "warm")
SCOPES = ("layer", "global")
GRANULARITIES = ("token", "step")
PHASE_CHOICES = ("split", "all", *PHASES)

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

__all__ = [
    "DEFAULT_POLICIES",
    "SERVICES",
    "belady_hit_rates",
    "cache_hit_rates",
    "cache_reduction",
    "lru_hit_rates",
    "parse_policy",
]


def parse_policy(name: str) -> tuple[CachePolicy, int]:
    """The registered policy `name` names and its parameter (lookahead-16 → (lookahead-<L>, 16));
    one clear error listing the valid names otherwise."""
    return get_policy(name)


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


# ---- request arrays of one chunk ------------------------------------------------------------------
def phase_requests(chunk: Trace, phase: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """(X int16/int32[rows, L, k] laid out layer by layer (`_kernels.layer_major`: no copy of a
    clustered store's chunk), offsets int64[S+1]) of the chunk's tokens of `phase` ('all',
    'prefill' or 'decode'). Sequences without such tokens stay, empty, so batches of sequences
    are the same whatever the phase."""
    mask = None if phase == "all" else chunk.phase == PHASES.index(phase)
    if mask is None or mask.all():
        return K.layer_major(chunk.experts), np.ascontiguousarray(chunk.seq_offsets, np.int64)
    kept = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    offsets = np.ascontiguousarray(kept[chunk.seq_offsets], dtype=np.int64)
    return K.select_rows(chunk.experts, mask), offsets


def request_arrays(
    X: np.ndarray,
    offsets: np.ndarray,
    num_experts: int,
    scope: str = "layer",
    granularity: str = "token",
    batch_size: int = 1,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(X int16/int32[rows, nL', K'] padded with -1, offsets, number of distinct items) to
    simulate.

    Step granularity unions a batch's tokens per position (`batch_size` sequences per batch,
    counted from the first sequence of X). Global scope is one virtual layer whose items are
    (layer, expert) pairs, requested token by token and, within a token, layer by layer.
    """
    E = num_experts
    if granularity == "step":
        if batch_size < 1:
            raise InvalidParameterError("batch size must be at least 1")
        X, offsets = K.step_requests(X, offsets, int(batch_size), E)
    if scope == "global":
        n, nl, k = X.shape
        shifted = X + (np.arange(nl, dtype=np.int32) * E)[None, :, None]
        X = np.where(X >= 0, shifted, -1).reshape(n * nl, 1, k).astype(np.int32)
        return np.ascontiguousarray(X), offsets * nl, E * nl
    return X, offsets, E


def simulate(
    req: Requests, policies: Sequence[tuple[CachePolicy, int]], slots: np.ndarray, start: str
) -> np.ndarray:
    """hits int64[len(policies), layers, len(slots)] of each (policy, parameter) on `req`."""
    out = np.zeros((len(policies), req.num_layers, len(slots)), dtype=np.int64)
    warm = None
    for i, (policy, param) in enumerate(policies):
        policy.check_service(req.service)
        out[i] = policy.simulate(req, slots, param)
        if start == "warm" and policy.warm_fill:
            if warm is None:
                dist = K.distinct_hist(req.X, req.offsets, req.chunks, req.n_items)
                d = np.arange(dist.shape[1], dtype=np.int64)
                warm = (dist[:, None, :] * np.minimum(slots[:, None], d[None, :])[None]).sum(2)
            out[i] += warm
    return out


# ---- the reduction --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheSpec:
    """What one `cache_hit_rates` call computes (validated), shared by kernel and finalize."""

    names: tuple[str, ...]
    policies: tuple[tuple[CachePolicy, int], ...]
    caps: tuple[int, ...]
    scope: str
    service: str
    start: str
    granularity: str
    phase: str
    batch_size: int
    layers: tuple[int, ...]
    num_experts: int
    top_k: int

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases each chunk is counted for."""
        return PHASES if self.phase == "split" else (self.phase,)

    @property
    def rows(self) -> int:
        return 1 if self.scope == "global" else len(self.layers)

    @property
    def slots(self) -> np.ndarray:
        mult = len(self.layers) if self.scope == "global" else 1
        return np.asarray(self.caps, dtype=np.int64) * mult


@dataclass
class CacheCounts:
    """A partial: per phase, token rows, the largest request set, requests per layer and hits per
    (policy, layer, capacity). Integers only, so merging is exact."""

    tokens: dict[str, int]
    kmax: dict[str, int]
    requests: dict[str, np.ndarray]
    hits: dict[str, np.ndarray]


def _empty_counts(spec: CacheSpec) -> CacheCounts:
    shape = (len(spec.policies), spec.rows, len(spec.caps))
    return CacheCounts(
        tokens={p: 0 for p in spec.phases},
        kmax={p: 0 for p in spec.phases},
        requests={p: np.zeros(spec.rows, dtype=np.int64) for p in spec.phases},
        hits={p: np.zeros(shape, dtype=np.int64) for p in spec.phases},
    )


def _cache_kernel(spec: CacheSpec, chunk: Trace) -> CacheCounts:
    out = _empty_counts(spec)
    slots = spec.slots
    for ph in spec.phases:
        X, offsets = phase_requests(chunk, ph)
        out.tokens[ph] = int(X.shape[0])
        if X.shape[0] == 0:
            continue
        X, offsets, n_items = request_arrays(
            X, offsets, spec.num_experts, spec.scope, spec.granularity, spec.batch_size
        )
        if X.min() >= 0:  # no padding: every row requests K items at every layer
            out.kmax[ph] = int(X.shape[2])
            out.requests[ph] = np.full(X.shape[1], X.shape[0] * X.shape[2], dtype=np.int64)
        else:
            valid = (X >= 0).sum(axis=2)
            out.kmax[ph] = int(valid.max())
            out.requests[ph] = valid.sum(axis=0).astype(np.int64)
        req = Requests(X, offsets, n_items, spec.service)
        out.hits[ph] = simulate(req, spec.policies, slots, spec.start)
    return out


def _merge_counts(a: CacheCounts, b: CacheCounts) -> CacheCounts:
    return CacheCounts(
        tokens={p: a.tokens[p] + b.tokens[p] for p in a.tokens},
        kmax={p: max(a.kmax[p], b.kmax[p]) for p in a.kmax},
        requests={p: a.requests[p] + b.requests[p] for p in a.requests},
        hits={p: a.hits[p] + b.hits[p] for p in a.hits},
    )


def _finalize_counts(spec: CacheSpec, counts: CacheCounts) -> pl.DataFrame:
    if spec.phase == "split":
        present = [p for p in PHASES if counts.tokens[p] > 0]
        if not present:  # nothing selected: zero counts, reported as 'all'
            empty = _empty_counts(spec)
            counts = CacheCounts(
                tokens={"all": 0},
                kmax={"all": 0},
                requests={"all": empty.requests[PHASES[0]]},
                hits={"all": empty.hits[PHASES[0]]},
            )
            present = ["all"]
    else:
        if counts.tokens[spec.phase] == 0:
            raise InvalidParameterError(
                f"this selection has no {spec.phase} tokens; pick another phase"
            )
        present = [spec.phase]
    caps = np.asarray(spec.caps, dtype=np.int64)
    slots = spec.slots
    layer_ids: list[int | None] = [None] if spec.scope == "global" else [*spec.layers, None]
    frames: list[pl.DataFrame] = []
    for ph in present:
        feasible = (
            slots >= counts.kmax[ph]
            if spec.service == "simultaneous"
            else np.ones(len(caps), dtype=bool)
        )
        reqs = counts.requests[ph]
        if spec.scope != "global":
            reqs = np.append(reqs, reqs.sum())
        for i, name in enumerate(spec.names):
            hits = counts.hits[ph][i]
            if spec.scope != "global":
                hits = np.vstack([hits, hits.sum(axis=0, keepdims=True)])
            n_rows = len(layer_ids) * len(caps)
            rate = hits / np.maximum(reqs, 1)[:, None]
            rate = np.where(feasible[None, :], rate, np.nan)
            frames.append(
                pl.DataFrame(
                    {
                        "phase": [ph] * n_rows,
                        "scope": [spec.scope] * n_rows,
                        "layer": np.repeat(np.array(layer_ids, dtype=object), len(caps)).tolist(),
                        "policy": [name] * n_rows,
                        "service": [spec.service] * n_rows,
                        "start": [spec.start] * n_rows,
                        "granularity": [spec.granularity] * n_rows,
                        "capacity": np.tile(caps, len(layer_ids)),
                        "slots": np.tile(slots, len(layer_ids)),
                        "rho": np.tile(caps / spec.top_k, len(layer_ids)),
                        "hits": hits.reshape(-1),
                        "requests": np.repeat(reqs, len(caps)),
                        "hit_rate": rate.reshape(-1),
                    },
                    schema=SCHEMA,
                ).with_columns(pl.col("hit_rate").fill_nan(None))
            )
    return pl.concat(frames) if frames else pl.DataFrame(schema=SCHEMA)


def check_policies(policies: Sequence[str], service: str) -> list[tuple[CachePolicy, int]]:
    """Each name resolved in the registry and checked against the service (one clear error)."""
    if not policies:
        raise InvalidParameterError("no policies given; e.g. lru,belady")
    resolved = [parse_policy(p) for p in policies]
    for name, (policy, _) in zip(policies, resolved, strict=True):
        policy.check_service(service, name.strip().lower())
    return resolved


def cache_reduction(
    info: SourceInfo,
    policies: Sequence[str] = DEFAULT_POLICIES,
    capacities: Iterable[int] | None = None,
    scope: str = "layer",
    service: str = "stream",
    start: str = "cold",
    granularity: str = "token",
    phase: str = "split",
    batch_size: int | None = None,
) -> Reduction[CacheCounts, pl.DataFrame]:
    """`cache_hit_rates` as a `Reduction` over a source described by `info` (validated here)."""
    _choice(scope, SCOPES, "scope")
    _choice(service, tuple(SERVICES), "service")
    _choice(start, STARTS, "start")
    _choice(granularity, GRANULARITIES, "granularity")
    _choice(phase, PHASE_CHOICES, "phase")
    resolved = check_policies(list(policies), service)
    caps = check_capacities(capacities, info.num_experts)
    bsz = int(batch_size if batch_size is not None else info.meta.get("batch_size", 1) or 1)
    if bsz < 1:
        raise InvalidParameterError("batch size must be at least 1")
    spec = CacheSpec(
        names=tuple(p.strip().lower() for p in policies),
        policies=tuple(resolved),
        caps=tuple(int(c) for c in caps),
        scope=scope,
        service=service,
        start=start,
        granularity=granularity,
        phase=phase,
        batch_size=bsz,
        layers=tuple(info.layers),
        num_experts=info.num_experts,
        top_k=info.top_k,
    )
    return Reduction(
        kernel=partial(_cache_kernel, spec),
        merge=_merge_counts,
        finalize=partial(_finalize_counts, spec),
        empty=partial(_empty_counts, spec),
        align=bsz if granularity == "step" else 1,
        weights=False,
        name="cache hit rates",
    )


def select(data: Trace | TraceSource, labels: Sequence[str] | None) -> TraceSource:
    """The data as a source, narrowed to `labels` (phases are picked per chunk by the kernels)."""
    src = as_source(data)
    return src.select(labels=list(labels)) if labels else src


def cache_hit_rates(
    data: Trace | TraceSource,
    policies: Sequence[str] = DEFAULT_POLICIES,
    capacities: Iterable[int] | None = None,
    scope: str = "layer",
    service: str = "stream",
    start: str = "cold",
    granularity: str = "token",
    phase: str = "split",
    batch_size: int | None = None,
    labels: Sequence[str] | None = None,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Hit rate of each policy at each capacity C (experts per layer), long form.

    Rows per phase (`split` = prefill and decode apart, each present one), per layer plus a pooled
    row (layer null: all layers' hits over all their requests), or for `scope="global"` one cache
    of C·#layers slots shared by all layers (layer null, `slots` = C·#layers). `rho` = C/k.
    `data` is a Trace or a TraceSource (e.g. `RoutingStore.source(run)`), read in chunks of at
    most `max_rows` route rows; `progress(done, total)` sees route rows; `executor` runs the
    chunks elsewhere (e.g. `RayExecutor`). The result does not depend on how the run is cut.
    """
    src = select(data, labels)
    reduction = cache_reduction(
        src.info, policies, capacities, scope, service, start, granularity, phase, batch_size
    )
    return run_reduction(src, reduction, max_rows=max_rows, progress=progress, executor=executor)


def belady_hit_rates(data: Trace | TraceSource, **kwargs: Any) -> pl.DataFrame:
    """Belady/MIN hit rates (the optimum of admitting policies under stream service)."""
    return cache_hit_rates(data, policies=("belady",), **kwargs)


def lru_hit_rates(data: Trace | TraceSource, **kwargs: Any) -> pl.DataFrame:
    """LRU hit rates at every capacity, from one stack-distance pass."""
    return cache_hit_rates(data, policies=("lru",), **kwargs)
