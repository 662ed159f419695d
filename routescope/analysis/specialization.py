"""Expert specialization (DESIGN.md §4.3): load, domain and vocabulary specialization,
co-activation, router saturation.

Every function takes a `Trace` and returns a polars DataFrame. Counting is done per layer with
`np.bincount` over combined keys, so no [N, L, E] one-hot tensor is ever materialized. A token's
top-k set S_t holds k distinct experts, so "tokens whose S_t contains e" equals the number of
(token, slot) assignments to e.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from routescope.core.errors import InvalidParameterError
from routescope.core.trace import Trace

_CHUNK = 65_536  # token rows per block (bounds the k² pair keys per token)


def _require_tokens(trace: Trace, what: str) -> None:
    if trace.num_tokens == 0:
        raise InvalidParameterError(f"{what}: the trace holds no tokens; collect or select some")


def _counts_by_group(trace: Trace, col: int, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """int64[n_groups, E]: per group, the number of its tokens whose S_t (layer column) holds e."""
    e = trace.num_experts
    ex = trace.experts[:, col, :].astype(np.int64)
    keys = groups[:, None].astype(np.int64) * e + ex
    return np.bincount(keys.ravel(), minlength=n_groups * e).reshape(n_groups, e)


def _group_codes(trace: Trace, by: str) -> tuple[np.ndarray, list[str]]:
    """Per-token group code (−1 = no group) and the group names, for by ∈ {label, prompt_set}."""
    if by == "label":
        per_seq = trace.labels
    elif by == "prompt_set":
        per_seq = trace.prompt_sets
    else:
        raise InvalidParameterError(f"cannot group by {by!r}; use 'label' or 'prompt_set'")
    names = sorted({str(x) for x in per_seq.tolist() if x is not None})
    if not names:
        raise InvalidParameterError(
            f"no sequence of this run has a {by}; give the prompt set a '{by}' column"
        )
    index = {n: i for i, n in enumerate(names)}
    seq_codes = np.array([index[str(x)] if x is not None else -1 for x in per_seq], dtype=np.int64)
    return seq_codes[trace.seq_index], names


# ---- load -------------------------------------------------------------------------------------
def expert_load(trace: Trace) -> pl.DataFrame:
    """Per (layer, expert): number of routed assignments and their share of the layer's N·k."""
    _require_tokens(trace, "expert load")
    e, k, n = trace.num_experts, trace.top_k, trace.num_tokens
    rows = []
    for col, layer in enumerate(trace.layers):
        counts = np.bincount(trace.experts[:, col, :].astype(np.int64).ravel(), minlength=e)
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


def load_summary(trace: Trace) -> pl.DataFrame:
    """Per layer: entropy of the load share normalized by log E (1 = perfectly balanced),
    max/mean load (1 = balanced, E/k·… when a few experts take everything), and the number of
    experts never used."""
    load = expert_load(trace)
    e = trace.num_experts
    out = []
    for layer in trace.layers:
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
def domain_specialization(trace: Trace, by: str = "label") -> pl.DataFrame:
    """Per (group, layer, expert) with group = label (or prompt set), the OLMoE definition:

    share = fraction of the group's tokens whose S_t contains e; ratio_uniform = share / r with
    r = k/E; share_other = the same fraction over the other groups' tokens (tokens without a
    group are left out); ratio_other = share / share_other (null when share_other is 0).
    """
    _require_tokens(trace, "domain specialization")
    codes, names = _group_codes(trace, by)
    g, e = len(names), trace.num_experts
    codes = np.where(codes >= 0, codes, g)  # ungrouped tokens go to an extra row, dropped below
    r = trace.top_k / e
    n_g = np.bincount(codes, minlength=g + 1)[:g].astype(np.int64)
    frames = []
    for col, layer in enumerate(trace.layers):
        c = _counts_by_group(trace, col, codes, g + 1)[:g]  # [g, E]
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


def domain_cv(trace: Trace, by: str = "label") -> pl.DataFrame:
    """moe-lrc's summary per layer: for each expert the coefficient of variation (population std /
    mean) of its activation rate across groups, averaged over experts that are used at all.

    0 = every expert fires equally often in every domain; larger = more domain-specialized.
    """
    spec = domain_specialization(trace, by=by)
    names = sorted(set(spec[by].to_list()))
    if len(names) < 2:
        raise InvalidParameterError(
            f"domain CV needs at least two values of {by}; this run has {names}"
        )
    out = []
    for layer in trace.layers:
        s = spec.filter(pl.col("layer") == layer).sort([by, "expert"])
        rates = s["share"].to_numpy().reshape(len(names), trace.num_experts)  # [g, E]
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
def vocabulary_specialization(
    trace: Trace, min_count: int = 10, next_token: bool = False
) -> pl.DataFrame:
    """Per (layer, token_id, expert) with a nonzero count: for token ids seen ≥ min_count times,
    the share of their occurrences whose S_t contains e (OLMoE's vocabulary specialization).

    With next_token=True, a row's routing is credited to the id of the *next* token of the same
    sequence (what the model is about to predict); the last token of each sequence has none and
    is dropped.
    """
    if min_count < 1:
        raise InvalidParameterError(f"min_count must be ≥ 1, got {min_count}")
    _require_tokens(trace, "vocabulary specialization")
    if next_token:
        nxt = np.empty(trace.num_tokens, dtype=np.int64)
        nxt[:-1] = trace.token_ids[1:]
        last = trace.seq_offsets[1:][trace.seq_lengths > 0] - 1
        keep = np.ones(trace.num_tokens, dtype=bool)
        keep[last] = False
        ids = nxt[keep]
        ex = trace.experts[keep]
    else:
        ids = trace.token_ids.astype(np.int64)
        ex = trace.experts
    uniq, inv, occ = np.unique(ids, return_inverse=True, return_counts=True)
    frequent = occ >= min_count
    if not frequent.any():
        raise InvalidParameterError(
            f"no token id occurs {min_count} times or more; lower --min-count"
        )
    # Re-code so only frequent ids are counted.
    new_code = np.full(len(uniq), -1, dtype=np.int64)
    new_code[frequent] = np.arange(int(frequent.sum()))
    codes = new_code[inv]
    sel = codes >= 0
    codes, ex = codes[sel], ex[sel]
    ids_f, occ_f = uniq[frequent], occ[frequent]
    g, e = len(ids_f), trace.num_experts
    frames = []
    for col, layer in enumerate(trace.layers):
        keys = codes[:, None] * e + ex[:, col, :].astype(np.int64)
        c = np.bincount(keys.ravel(), minlength=g * e)
        nz = np.flatnonzero(c)
        tok = nz // e
        frames.append(
            pl.DataFrame(
                {
                    "layer": np.full(len(nz), layer, dtype=np.int32),
                    "token_id": ids_f[tok].astype(np.int64),
                    "expert": (nz % e).astype(np.int32),
                    "occurrences": occ_f[tok].astype(np.int64),
                    "count": c[nz].astype(np.int64),
                    "share": c[nz] / occ_f[tok],
                }
            )
        )
    return pl.concat(frames)


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
        a, b = ex_a[start : start + _CHUNK], ex_b[start : start + _CHUNK]
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


def coactivation(trace: Trace, layer: int) -> pl.DataFrame:
    """Within one layer, per ordered pair i ≠ j: N(i, j)/N(i), where N(i, j) counts tokens whose
    S_t holds both (every pair in S_t, not only rank-adjacent ones) and N(i) tokens holding i."""
    _require_tokens(trace, "co-activation")
    col = trace.layer_position(layer)
    ex = trace.experts[:, col, :].astype(np.int64)
    gram = _membership_gram(ex, ex, trace.num_experts)
    return _pair_frame(gram, np.diag(gram).copy(), layer, None)


def cross_layer_coactivation(trace: Trace, layer: int) -> pl.DataFrame:
    """Between layer l and the next MoE layer l': per (i, j), the share of tokens with i in S_t at
    l that have j in S_t at l' (N(i at l, j at l') / N(i at l))."""
    _require_tokens(trace, "co-activation")
    col = trace.layer_position(layer)
    if col + 1 >= trace.num_layers:
        raise InvalidParameterError(
            f"layer {layer} is the last MoE layer of this trace; pick one of "
            f"{list(trace.layers[:-1])}"
        )
    a = trace.experts[:, col, :].astype(np.int64)
    b = trace.experts[:, col + 1, :].astype(np.int64)
    e = trace.num_experts
    gram = _membership_gram(a, b, e)
    n_i = np.bincount(a.ravel(), minlength=e).astype(np.int64)
    return _pair_frame(gram, n_i, layer, trace.layers[col + 1])


# ---- router saturation -----------------------------------------------------------------------
def router_saturation(trace_a: Trace, trace_b: Trace) -> pl.DataFrame:
    """Per layer: mean over tokens of |S_t ∩ S'_t| / k between two runs over the same tokens
    (two checkpoints; steered vs unsteered), beside the chance level r = k/E."""
    if trace_a.num_experts != trace_b.num_experts or trace_a.top_k != trace_b.top_k:
        raise InvalidParameterError(
            f"runs differ in experts/top-k (E={trace_a.num_experts}, k={trace_a.top_k} vs "
            f"E={trace_b.num_experts}, k={trace_b.top_k}); compare runs of the same architecture"
        )
    if trace_a.layers != trace_b.layers:
        raise InvalidParameterError(
            f"runs have different MoE layers ({list(trace_a.layers)} vs {list(trace_b.layers)}); "
            "select the same layers in both"
        )
    same = (
        np.array_equal(trace_a.seq_ids, trace_b.seq_ids)
        and np.array_equal(trace_a.seq_offsets, trace_b.seq_offsets)
        and np.array_equal(trace_a.token_ids, trace_b.token_ids)
    )
    if not same:
        raise InvalidParameterError(
            "router saturation needs the same tokens in both runs (same sequences, same token "
            "ids); collect both runs from the same prompts and phase"
        )
    _require_tokens(trace_a, "router saturation")
    k, e = trace_a.top_k, trace_a.num_experts
    out = []
    for col, layer in enumerate(trace_a.layers):
        total = 0
        for start in range(0, trace_a.num_tokens, _CHUNK):
            a = trace_a.experts[start : start + _CHUNK, col, :]
            b = trace_b.experts[start : start + _CHUNK, col, :]
            total += int((a[:, :, None] == b[:, None, :]).sum())
        out.append(
            {
                "layer": layer,
                "saturation": total / (k * trace_a.num_tokens),
                "chance": k / e,
                "n_tokens": trace_a.num_tokens,
            }
        )
    return pl.DataFrame(out, schema_overrides={"layer": pl.Int32})


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
