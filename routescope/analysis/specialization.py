"""Expert specialization (DESIGN.md §4.3): load, domain and vocabulary specialization,
co-activation, router saturation.

Every function takes a `Trace` (small runs, notebooks) or a `TraceSource` (a run in the store)
and runs as a `Reduction` (routescope.analysis.streaming): a kernel counts one chunk of whole
sequences, partials are integer counts (per group/layer/expert, per expert pair, per token id as
sparse sorted keys) that add up exactly, and floats appear only in finalize. So a run streamed in
chunks of any size, in one process or on Ray, gives the in-memory numbers bit for bit, in memory
bounded by one chunk plus the counts.

Counting is done per layer with `np.bincount` over combined keys, so no [N, L, E] one-hot tensor
is ever materialized. A token's top-k set S_t holds k distinct experts, so "tokens whose S_t
contains e" equals the number of (token, slot) assignments to e.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import polars as pl

from routescope.analysis.streaming import (
    Executor,
    Progress,
    Reduction,
    add_arrays,
    run_reduction,
)
from routescope.core.errors import InvalidParameterError
from routescope.core.source import (
    DEFAULT_CHUNK_ROWS,
    SourceInfo,
    TraceSource,
    as_source,
)
from routescope.core.trace import Trace

_CHUNK = 65_536  # token rows per block (bounds the k² pair keys per token)
# Vocabulary counts use a dense [distinct ids, E] table per chunk up to this many bins (or this
# many per (token, slot) key), else a sort of the keys: the same sparse counts either way.
_DENSE_BINS = 1 << 22
_DENSE_PER_KEY = 4
GROUP_FIELDS = ("label", "prompt_set")


def _require_tokens(info: SourceInfo, what: str) -> None:
    if info.num_tokens == 0:
        raise InvalidParameterError(f"{what}: the trace holds no tokens; collect or select some")


def _layer_in(info: SourceInfo, layer: int) -> int:
    """Position of model layer `layer` among the source's MoE layers, or one clear error."""
    try:
        return info.layers.index(int(layer))
    except ValueError:
        raise InvalidParameterError(
            f"layer {layer} is not an MoE layer of this run; MoE layers are {list(info.layers)}"
        ) from None


def _group_names(info: SourceInfo, by: str | None) -> tuple[str, ...]:
    """The groups tokens are counted by (sorted), known before any chunk is read."""
    if by is None:
        return ()
    if by not in GROUP_FIELDS:
        raise InvalidParameterError(f"cannot group by {by!r}; use 'label' or 'prompt_set'")
    return info.labels if by == "label" else info.prompt_sets


def _seq_codes(chunk: Trace, by: str | None, index: dict[str, int], missing: int) -> np.ndarray:
    """Per sequence of the chunk, its group code (`missing` for sequences without a group)."""
    if by is None:
        return np.full(chunk.num_sequences, missing, dtype=np.int64)
    per_seq = chunk.labels if by == "label" else chunk.prompt_sets
    return np.array(
        [index.get(str(x), missing) if x is not None else missing for x in per_seq.tolist()],
        dtype=np.int64,
    )


# ---- group counts: load and domain specialization in one pass ---------------------------------
@dataclass(frozen=True)
class DomainCounts:
    """Integer counts behind load and domain specialization, from one pass over a run.

    counts[g, l, e]: tokens of group g (row G: tokens without a group) whose S_t at layers[l]
    holds e; tokens[g]: tokens of group g. `expert_load`, `load_summary`,
    `domain_specialization` and `domain_cv` accept it in place of a run, so a caller that wants
    all four reads the run once (`domain_counts`).
    """

    by: str | None
    names: tuple[str, ...]
    layers: tuple[int, ...]
    num_experts: int
    top_k: int
    counts: np.ndarray
    tokens: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.sum())


def _domain_kernel(
    chunk: Trace, *, by: str | None, names: tuple[str, ...], layers: tuple[int, ...], e: int
) -> dict[str, np.ndarray]:
    g = len(names)
    codes = np.repeat(
        _seq_codes(chunk, by, {n: i for i, n in enumerate(names)}, g), chunk.seq_lengths
    )
    pos = {layer: i for i, layer in enumerate(layers)}
    counts = np.zeros((g + 1, len(layers), e), dtype=np.int64)
    for col, layer in enumerate(chunk.layers):
        keys = codes[:, None] * e + chunk.experts[:, col, :].astype(np.int64)
        counts[:, pos[layer], :] = np.bincount(keys.ravel(), minlength=(g + 1) * e).reshape(
            g + 1, e
        )
    return {"counts": counts, "tokens": np.bincount(codes, minlength=g + 1).astype(np.int64)}


def _domain_empty(g: int, n_layers: int, e: int) -> dict[str, np.ndarray]:
    return {
        "counts": np.zeros((g + 1, n_layers, e), dtype=np.int64),
        "tokens": np.zeros(g + 1, dtype=np.int64),
    }


def _domain_finalize(
    p: dict[str, np.ndarray],
    *,
    by: str | None,
    names: tuple[str, ...],
    layers: tuple[int, ...],
    e: int,
    k: int,
) -> DomainCounts:
    return DomainCounts(by, names, layers, e, k, p["counts"], p["tokens"])


def domain_counts_reduction(
    info: SourceInfo, by: str | None = "label", layers: Sequence[int] | None = None
) -> Reduction[dict[str, np.ndarray], DomainCounts]:
    """The reduction behind `domain_counts` (groups and layers fixed from `info`)."""
    names = _group_names(info, by)
    sel = info.check_layers(layers)
    e = info.num_experts
    return Reduction(
        kernel=partial(_domain_kernel, by=by, names=names, layers=sel, e=e),
        merge=add_arrays,
        finalize=partial(_domain_finalize, by=by, names=names, layers=sel, e=e, k=info.top_k),
        empty=partial(_domain_empty, len(names), len(sel), e),
        layers=sel,
        weights=False,
        name="domain counts",
    )


def domain_counts(
    data: Trace | TraceSource,
    by: str | None = "label",
    *,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> DomainCounts:
    """Per (group, layer, expert) token counts, with group = label or prompt set (None: no
    groups, load only), in one pass; `layers` narrows the MoE layers (default all)."""
    source = as_source(data)
    reduction = domain_counts_reduction(source.info, by, layers)
    _require_tokens(source.info, "specialization")
    return run_reduction(source, reduction, max_rows=max_rows, progress=progress, executor=executor)


def _counts_of(
    data: Trace | TraceSource | DomainCounts,
    by: str | None,
    layers: Sequence[int] | None,
    what: str,
    **run: Any,
) -> DomainCounts:
    """Counts for `what`: computed from a run, or checked when given (layers, grouping)."""
    if not isinstance(data, DomainCounts):
        source = as_source(data)
        _group_names(source.info, by)  # a bad `by` before the no-token error, as before
        _require_tokens(source.info, what)
        return domain_counts(source, by, layers=layers, **run)
    if layers is not None and tuple(int(x) for x in layers) != data.layers:
        raise InvalidParameterError(
            f"these counts hold layers {list(data.layers)}, not {list(layers)}; count again"
        )
    if by is not None and data.by != by:
        raise InvalidParameterError(
            f"these counts are grouped by {data.by!r}, not {by!r}; count again with by={by!r}"
        )
    if data.num_tokens == 0:
        raise InvalidParameterError(f"{what}: the trace holds no tokens; collect or select some")
    return data


# ---- load -------------------------------------------------------------------------------------
def expert_load(
    data: Trace | TraceSource | DomainCounts,
    *,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Per (layer, expert): number of routed assignments and their share of the layer's N·k."""
    dc = _counts_of(
        data, None, layers, "expert load", max_rows=max_rows, progress=progress, executor=executor
    )
    e, k, n = dc.num_experts, dc.top_k, dc.num_tokens
    load = dc.counts.sum(axis=0)  # [L, E] over every group and the ungrouped tokens
    rows = []
    for col, layer in enumerate(dc.layers):
        counts = load[col]
        rows.append(
            pl.DataFrame(
                {
                    "layer": np.full(e, layer, dtype=np.int32),
                    "expert": np.arange(e, dtype=np.int32),
                    "count": counts.astype(np.int64),
                    "share": counts / (n * k),
                }
            )
        )
    return pl.concat(rows)


def load_summary(
    data: Trace | TraceSource | DomainCounts,
    *,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Per layer: entropy of the load share normalized by log E (1 = perfectly balanced),
    max/mean load (1 = balanced, E/k·… when a few experts take everything), and the number of
    experts never used."""
    dc = _counts_of(
        data, None, layers, "expert load", max_rows=max_rows, progress=progress, executor=executor
    )
    load = expert_load(dc)
    e = dc.num_experts
    out = []
    for layer in dc.layers:
        share = load.filter(pl.col("layer") == layer)["share"].to_numpy()
        nz = share[share > 0]
        entropy = float(-(nz * np.log(nz)).sum())
        out.append(
            {
                "layer": layer,
                "entropy_norm": entropy / np.log(e) if e > 1 else 1.0,
                "max_over_mean": float(share.max() / share.mean()),
                "unused_experts": int((share == 0).sum()),
            }
        )
    return pl.DataFrame(out, schema_overrides={"layer": pl.Int32})


# ---- domain specialization -------------------------------------------------------------------
def _grouped_counts(
    data: Trace | TraceSource | DomainCounts,
    by: str,
    layers: Sequence[int] | None,
    what: str,
    **run: Any,
) -> DomainCounts:
    if by not in GROUP_FIELDS:
        raise InvalidParameterError(f"cannot group by {by!r}; use 'label' or 'prompt_set'")
    if isinstance(data, DomainCounts) and data.by != by:
        raise InvalidParameterError(
            f"these counts are grouped by {data.by!r}, not {by!r}; count again with by={by!r}"
        )
    names = data.names if isinstance(data, DomainCounts) else _group_names(as_source(data).info, by)
    if not names:
        raise InvalidParameterError(
            f"no sequence of this run has a {by}; give the prompt set a '{by}' column"
        )
    return _counts_of(data, by, layers, what, **run)


def domain_specialization(
    data: Trace | TraceSource | DomainCounts,
    by: str = "label",
    *,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Per (group, layer, expert) with group = label (or prompt set), the OLMoE definition:

    share = fraction of the group's tokens whose S_t contains e; ratio_uniform = share / r with
    r = k/E; share_other = the same fraction over the other groups' tokens (tokens without a
    group are left out); ratio_other = share / share_other (null when share_other is 0).
    """
    dc = _grouped_counts(
        data,
        by,
        layers,
        "domain specialization",
        max_rows=max_rows,
        progress=progress,
        executor=executor,
    )
    names = dc.names
    g, e = len(names), dc.num_experts
    r = dc.top_k / e
    n_g = dc.tokens[:g]
    frames = []
    for col, layer in enumerate(dc.layers):
        c = dc.counts[:g, col, :]  # [g, E]
        other_c = c.sum(axis=0, keepdims=True) - c
        other_n = n_g.sum() - n_g
        share = c / n_g[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            share_other = np.where(other_n[:, None] > 0, other_c / other_n[:, None], np.nan)
            ratio_other = np.where(share_other > 0, share / share_other, np.nan)
        frames.append(
            pl.DataFrame(
                {
                    by: np.repeat(np.asarray(names, dtype=object), e).tolist(),
                    "layer": np.full(g * e, layer, dtype=np.int32),
                    "expert": np.tile(np.arange(e, dtype=np.int32), g),
                    "n_tokens": np.repeat(n_g, e),
                    "count": c.ravel(),
                    "share": share.ravel(),
                    "uniform": np.full(g * e, r),
                    "ratio_uniform": share.ravel() / r,
                    "share_other": share_other.ravel(),
                    "ratio_other": ratio_other.ravel(),
                },
                nan_to_null=True,
            )
        )
    return pl.concat(frames)


def domain_cv(
    data: Trace | TraceSource | DomainCounts,
    by: str = "label",
    *,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """moe-lrc's summary per layer: for each expert the coefficient of variation (population std /
    mean) of its activation rate across groups, averaged over experts that are used at all.

    0 = every expert fires equally often in every domain; larger = more domain-specialized.
    """
    dc = _grouped_counts(
        data, by, layers, "domain CV", max_rows=max_rows, progress=progress, executor=executor
    )
    names = list(dc.names)
    if len(names) < 2:
        raise InvalidParameterError(
            f"domain CV needs at least two values of {by}; this run has {names}"
        )
    spec = domain_specialization(dc, by=by)
    out = []
    for layer in dc.layers:
        s = spec.filter(pl.col("layer") == layer).sort([by, "expert"])
        rates = s["share"].to_numpy().reshape(len(names), dc.num_experts)  # [g, E]
        mean = rates.mean(axis=0)
        used = mean > 0
        cv = rates.std(axis=0)[used] / mean[used]
        out.append(
            {
                "layer": layer,
                "cv_mean": float(cv.mean()) if cv.size else float("nan"),
                "cv_max": float(cv.max()) if cv.size else float("nan"),
                "n_groups": len(names),
            }
        )
    return pl.DataFrame(out, schema_overrides={"layer": pl.Int32})


# ---- vocabulary specialization ---------------------------------------------------------------
#: A sparse count: sorted unique int64 keys and their int64 counts.
Sparse = tuple[np.ndarray, np.ndarray]


def _sparse(keys: np.ndarray) -> Sparse:
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq.astype(np.int64), counts.astype(np.int64)


def _sparse_add(a: Sparse, b: Sparse) -> Sparse:
    """Exact sum of two sparse counts (integers throughout)."""
    if not len(a[0]):
        return b
    if not len(b[0]):
        return a
    keys = np.concatenate([a[0], b[0]])
    counts = np.concatenate([a[1], b[1]])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(counts, starts)


def _no_sparse() -> Sparse:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)


def _vocab_rows(chunk: Trace, next_token: bool) -> tuple[np.ndarray, np.ndarray]:
    """(token id credited to each kept row, the kept rows' experts [n, L, k])."""
    if not next_token:
        return chunk.token_ids.astype(np.int64), chunk.experts
    n = chunk.num_tokens
    nxt = np.empty(n, dtype=np.int64)
    nxt[:-1] = chunk.token_ids[1:]
    last = chunk.seq_offsets[1:][chunk.seq_lengths > 0] - 1
    keep = np.ones(n, dtype=bool)
    keep[last] = False
    return nxt[keep], chunk.experts[keep]


def _vocab_kernel(chunk: Trace, *, e: int, first_layer: int, next_token: bool) -> dict[Any, Sparse]:
    ids, ex = _vocab_rows(chunk, next_token)
    uniq, codes, occ = np.unique(ids, return_inverse=True, return_counts=True)
    out: dict[Any, Sparse] = {}
    if first_layer in chunk.layers:  # occurrences once, with the first layer's pass
        out["occurrences"] = (uniq.astype(np.int64), occ.astype(np.int64))
    # Dense counts over the chunk's distinct ids when that table is small, else a sort.
    dense = len(uniq) * e <= max(_DENSE_BINS, _DENSE_PER_KEY * ex.shape[0] * chunk.top_k)
    for col, layer in enumerate(chunk.layers):
        col_ex = ex[:, col, :].astype(np.int64)
        if dense:
            c = np.bincount((codes[:, None] * e + col_ex).ravel(), minlength=len(uniq) * e)
            nz = np.flatnonzero(c)
            out[int(layer)] = (uniq[nz // e].astype(np.int64) * e + nz % e, c[nz].astype(np.int64))
        else:
            out[int(layer)] = _sparse((ids[:, None] * e + col_ex).ravel())
    return out


def _vocab_merge(a: dict[Any, Sparse], b: dict[Any, Sparse]) -> dict[Any, Sparse]:
    out = dict(a)
    for key, val in b.items():
        out[key] = _sparse_add(out[key], val) if key in out else val
    return out


def _vocab_finalize(
    p: dict[Any, Sparse], *, e: int, layers: tuple[int, ...], min_count: int
) -> pl.DataFrame:
    ids, occ = p.get("occurrences", _no_sparse())
    frequent = occ >= min_count
    if not frequent.any():
        raise InvalidParameterError(
            f"no token id occurs {min_count} times or more; lower --min-count"
        )
    frames = []
    for layer in layers:
        # popped: each layer's counts are freed once its rows are built (the merged partial is
        # this call's own), so counts and rows of every layer are never held at once
        keys, counts = p.pop(layer, _no_sparse())
        tok = keys // e
        where = np.searchsorted(ids, tok)
        tok_occ = occ[where]
        keep = tok_occ >= min_count
        frames.append(
            pl.DataFrame(
                {
                    "layer": np.full(int(keep.sum()), layer, dtype=np.int32),
                    "token_id": tok[keep].astype(np.int64),
                    "expert": (keys[keep] % e).astype(np.int32),
                    "occurrences": tok_occ[keep].astype(np.int64),
                    "count": counts[keep].astype(np.int64),
                    "share": counts[keep] / tok_occ[keep],
                }
            )
        )
    return pl.concat(frames)


def vocabulary_reduction(
    info: SourceInfo,
    min_count: int = 10,
    next_token: bool = False,
    layers: Sequence[int] | None = None,
) -> Reduction[dict[Any, Sparse], pl.DataFrame]:
    """The reduction behind `vocabulary_specialization`: one layer at a time, sparse counts."""
    sel = info.check_layers(layers)
    e = info.num_experts
    return Reduction(
        kernel=partial(_vocab_kernel, e=e, first_layer=sel[0], next_token=next_token),
        merge=_vocab_merge,
        finalize=partial(_vocab_finalize, e=e, layers=sel, min_count=min_count),
        empty=dict,
        layers=sel,
        per_layer=True,
        weights=False,
        name="vocabulary specialization",
    )


def vocabulary_specialization(
    data: Trace | TraceSource,
    min_count: int = 10,
    next_token: bool = False,
    *,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Per (layer, token_id, expert) with a nonzero count: for token ids seen ≥ min_count times,
    the share of their occurrences whose S_t contains e (OLMoE's vocabulary specialization).

    With next_token=True, a row's routing is credited to the id of the *next* token of the same
    sequence (what the model is about to predict); the last token of each sequence has none and
    is dropped. Counts are kept sparse and read one layer at a time; on a large run, name the
    `layers` you want (the result has a row per token id and expert it reaches, per layer).
    """
    if min_count < 1:
        raise InvalidParameterError(f"min_count must be ≥ 1, got {min_count}")
    source = as_source(data)
    if not source.info.has_token_ids:
        raise InvalidParameterError(
            f"vocabulary specialization needs token ids, and run {source.info.run_id or ''} has "
            "none (an imported trace without them); import it with the token ids, or use the "
            "per-label analyses"
        )
    reduction = vocabulary_reduction(source.info, min_count, next_token, layers)
    _require_tokens(source.info, "vocabulary specialization")
    return run_reduction(source, reduction, max_rows=max_rows, progress=progress, executor=executor)


def expert_top_tokens(vocab: pl.DataFrame, top: int = 10, min_share: float = 0.0) -> pl.DataFrame:
    """Per (layer, expert), the token ids it dominates: highest share first (ties: more
    occurrences first, then lower id), at most `top`, keeping only shares ≥ min_share."""
    return (
        vocab.filter(pl.col("share") >= min_share)
        .sort(
            ["layer", "expert", "share", "occurrences", "token_id"],
            descending=[False, False, True, True, False],
        )
        .group_by(["layer", "expert"], maintain_order=True)
        .head(top)
        .with_columns(pl.int_range(1, pl.len() + 1).over(["layer", "expert"]).alias("rank"))
    )


# ---- co-activation ---------------------------------------------------------------------------
def _membership_gram(ex_a: np.ndarray, ex_b: np.ndarray, e: int) -> np.ndarray:
    """int64[E, E]: number of tokens whose set A contains i and set B contains j.

    Every (slot of A, slot of B) pair of a token is one key i·E + j; experts within a set are
    distinct, so counting keys counts tokens. Blockwise to bound the k² keys per token.
    """
    out = np.zeros(e * e, dtype=np.int64)
    for start in range(0, len(ex_a), _CHUNK):
        a = ex_a[start : start + _CHUNK].astype(np.int64)
        b = ex_b[start : start + _CHUNK].astype(np.int64)
        keys = a[:, :, None] * e + b[:, None, :]
        out += np.bincount(keys.ravel(), minlength=e * e)
    return out.reshape(e, e)


def _pair_frame(gram: np.ndarray, n_i: np.ndarray, layer: int, layer_b: int | None) -> pl.DataFrame:
    e = gram.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(n_i[:, None] > 0, gram / n_i[:, None], np.nan)
    ii, jj = np.meshgrid(np.arange(e), np.arange(e), indexing="ij")
    data: dict[str, object] = {"layer": np.full(e * e, layer, dtype=np.int32)}
    if layer_b is not None:
        data["next_layer"] = np.full(e * e, layer_b, dtype=np.int32)
    data |= {
        "expert_i": ii.ravel().astype(np.int32),
        "expert_j": jj.ravel().astype(np.int32),
        "n_i": np.repeat(n_i, e),
        "n_ij": gram.ravel(),
        "rate": rate.ravel(),
    }
    df = pl.DataFrame(data, nan_to_null=True)
    if layer_b is None:  # within a layer, i == j is trivially 1: leave it out
        df = df.filter(pl.col("expert_i") != pl.col("expert_j"))
    return df


def _coact_kernel(chunk: Trace, *, e: int) -> dict[str, np.ndarray]:
    """Gram of the chunk's first layer against its last (the same layer when it has one)."""
    a = chunk.experts[:, 0, :]
    b = chunk.experts[:, chunk.num_layers - 1, :]
    n_i = np.bincount(a.astype(np.int64).ravel(), minlength=e).astype(np.int64)
    return {"gram": _membership_gram(a, b, e), "n_i": n_i}


def _coact_empty(e: int) -> dict[str, np.ndarray]:
    return {"gram": np.zeros((e, e), dtype=np.int64), "n_i": np.zeros(e, dtype=np.int64)}


def _coact_finalize(p: dict[str, np.ndarray], *, layer: int, layer_b: int | None) -> pl.DataFrame:
    return _pair_frame(p["gram"], p["n_i"], layer, layer_b)


def coactivation_reduction(
    info: SourceInfo, layer: int, cross_layer: bool = False
) -> Reduction[dict[str, np.ndarray], pl.DataFrame]:
    """The reduction behind `coactivation` (cross_layer: `cross_layer_coactivation`)."""
    col = _layer_in(info, layer)
    layer_b = None
    if cross_layer:
        if col + 1 >= len(info.layers):
            raise InvalidParameterError(
                f"layer {layer} is the last MoE layer of this trace; pick one of "
                f"{list(info.layers[:-1])}"
            )
        layer_b = info.layers[col + 1]
    e = info.num_experts
    return Reduction(
        kernel=partial(_coact_kernel, e=e),
        merge=add_arrays,
        finalize=partial(_coact_finalize, layer=int(layer), layer_b=layer_b),
        empty=partial(_coact_empty, e),
        layers=(int(layer),) if layer_b is None else (int(layer), int(layer_b)),
        weights=False,
        name="co-activation",
    )


def coactivation(
    data: Trace | TraceSource,
    layer: int,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Within one layer, per ordered pair i ≠ j: N(i, j)/N(i), where N(i, j) counts tokens whose
    S_t holds both (every pair in S_t, not only rank-adjacent ones) and N(i) tokens holding i."""
    source = as_source(data)
    reduction = coactivation_reduction(source.info, layer)
    _require_tokens(source.info, "co-activation")
    return run_reduction(source, reduction, max_rows=max_rows, progress=progress, executor=executor)


def cross_layer_coactivation(
    data: Trace | TraceSource,
    layer: int,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Between layer l and the next MoE layer l': per (i, j), the share of tokens with i in S_t at
    l that have j in S_t at l' (N(i at l, j at l') / N(i at l))."""
    source = as_source(data)
    reduction = coactivation_reduction(source.info, layer, cross_layer=True)
    _require_tokens(source.info, "co-activation")
    return run_reduction(source, reduction, max_rows=max_rows, progress=progress, executor=executor)


# ---- router saturation -----------------------------------------------------------------------
_SAME_TOKENS = (
    "router saturation needs the same tokens in both runs (same sequences, same token ids); "
    "collect both runs from the same prompts and phase"
)


class PairedSource:
    """Two runs over the same tokens read in step: each chunk is run A's chunk, with run B's
    chunk of the same sequences in `meta['paired']`. Both hold the same sequence lengths, so
    both cut into the same chunks; each side reads at most half of `max_rows`."""

    def __init__(self, a: TraceSource, b: TraceSource) -> None:
        if not np.array_equal(a.seq_lengths(), b.seq_lengths()):
            raise InvalidParameterError(_SAME_TOKENS)
        self.a, self.b = a, b

    @property
    def info(self) -> SourceInfo:
        return self.a.info

    def seq_lengths(self) -> np.ndarray:
        return self.a.seq_lengths()

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
        both = zip(
            *(
                side.chunks(
                    layers=layers,
                    max_rows=max(1, max_rows // 2),
                    align=align,
                    seq_range=seq_range,
                    with_speculative=with_speculative,
                    with_weights=with_weights,
                )
                for side in (self.a, self.b)
            ),
            strict=True,
        )
        for ca, cb in both:  # equal sequence lengths: both cut at the same sequences
            yield replace(ca, meta={**ca.meta, "paired": cb})

    def select(self, *, phase: str = "all", labels: Sequence[str] | None = None) -> PairedSource:
        return PairedSource(
            self.a.select(phase=phase, labels=labels), self.b.select(phase=phase, labels=labels)
        )


def _saturation_kernel(chunk: Trace, *, n_layers: int) -> dict[str, np.ndarray]:
    other: Trace = chunk.meta["paired"]
    same = (
        other.num_tokens == chunk.num_tokens
        and np.array_equal(chunk.seq_ids, other.seq_ids)
        and np.array_equal(chunk.seq_offsets, other.seq_offsets)
        and np.array_equal(chunk.token_ids, other.token_ids)
    )
    if not same:
        raise InvalidParameterError(_SAME_TOKENS)
    overlap = np.zeros(n_layers, dtype=np.int64)
    for col in range(chunk.num_layers):
        for start in range(0, chunk.num_tokens, _CHUNK):
            a = chunk.experts[start : start + _CHUNK, col, :]
            b = other.experts[start : start + _CHUNK, col, :]
            overlap[col] += int((a[:, :, None] == b[:, None, :]).sum())
    return {"overlap": overlap, "tokens": np.array([chunk.num_tokens], dtype=np.int64)}


def _saturation_empty(n_layers: int) -> dict[str, np.ndarray]:
    return {"overlap": np.zeros(n_layers, dtype=np.int64), "tokens": np.zeros(1, dtype=np.int64)}


def _saturation_finalize(
    p: dict[str, np.ndarray], *, layers: tuple[int, ...], k: int, e: int
) -> pl.DataFrame:
    n = int(p["tokens"][0])
    out = [
        {"layer": layer, "saturation": int(p["overlap"][col]) / (k * n), "chance": k / e,
         "n_tokens": n}
        for col, layer in enumerate(layers)
    ]  # fmt: skip
    return pl.DataFrame(out, schema_overrides={"layer": pl.Int32})


def saturation_reduction(info: SourceInfo) -> Reduction[dict[str, np.ndarray], pl.DataFrame]:
    """The reduction behind `router_saturation`, over a `PairedSource` with `info`."""
    n_layers = len(info.layers)
    return Reduction(
        kernel=partial(_saturation_kernel, n_layers=n_layers),
        merge=add_arrays,
        finalize=partial(
            _saturation_finalize, layers=info.layers, k=info.top_k, e=info.num_experts
        ),
        empty=partial(_saturation_empty, n_layers),
        weights=False,
        name="router saturation",
    )


def router_saturation(
    data_a: Trace | TraceSource,
    data_b: Trace | TraceSource,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Per layer: mean over tokens of |S_t ∩ S'_t| / k between two runs over the same tokens
    (two checkpoints; steered vs unsteered), beside the chance level r = k/E. The two runs are
    read in step, chunk by chunk; they must hold the same sequences and token ids."""
    a, b = as_source(data_a), as_source(data_b)
    ia, ib = a.info, b.info
    if ia.num_experts != ib.num_experts or ia.top_k != ib.top_k:
        raise InvalidParameterError(
            f"runs differ in experts/top-k (E={ia.num_experts}, k={ia.top_k} vs "
            f"E={ib.num_experts}, k={ib.top_k}); compare runs of the same architecture"
        )
    if ia.layers != ib.layers:
        raise InvalidParameterError(
            f"runs have different MoE layers ({list(ia.layers)} vs {list(ib.layers)}); "
            "select the same layers in both"
        )
    paired = PairedSource(a, b)
    _require_tokens(ia, "router saturation")
    return run_reduction(
        paired, saturation_reduction(ia), max_rows=max_rows, progress=progress, executor=executor
    )


def top_specialized_experts(
    spec: pl.DataFrame, by: str = "label", per_group: int = 1
) -> pl.DataFrame:
    """From `domain_specialization` output: per (layer, group) the `per_group` experts with the
    largest share − share_other (the risk difference of §4.4 at token level), so an expert must be
    both used by the group and rarely by the others; ratios alone favour barely used experts.

    The "most domain-specific experts" summary shown by `routescope demo`.
    """
    return (
        spec.with_columns((pl.col("share") - pl.col("share_other").fill_null(0.0)).alias("lift"))
        .sort(["layer", by, "lift"], descending=[False, False, True])
        .group_by(["layer", by], maintain_order=True)
        .head(per_group)
    )
