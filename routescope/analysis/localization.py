"""Functional localization (DESIGN.md §4.4): which (layer, expert) fire more on a target token
set than on a control token set, with prompt-level uncertainty.

The unit of resampling is the prompt (a sequence of the trace), because tokens of one prompt are
not independent. Everything runs on per-prompt count matrices [S, L·E]: a bootstrap or a
permutation is a weight matrix [B, S] times those counts, so 1,000 resamples are a few matrix
products, not 1,000 passes over the tokens.

Two designs:
- unpaired: target and control are disjoint sets of prompts (two labels, two prompt sets, two runs
  of different prompts). Bootstrap resamples prompts within each set; the permutation test
  shuffles which prompts are target and which are control (prompts kept whole).
- paired: every prompt contributes to both sets (target spans vs the rest of the same prompts; two
  runs over the same prompts). Bootstrap resamples prompts once for both sets; the permutation
  test swaps each prompt's target and control parts at random.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from routescope.core.errors import InvalidParameterError
from routescope.core.trace import Trace

_BLOCK = 250  # resamples per matrix product (bounds memory at [250, S] and [250, L·E])


# ---- token-set constructors -------------------------------------------------------------------
def split_labels(trace: Trace, target: str, control: str | None = None) -> tuple[Trace, Trace]:
    """Target = sequences labelled `target`; control = those labelled `control`, or (None) every
    other labelled sequence."""
    known = trace.label_set
    for name in [target] + ([control] if control is not None else []):
        if name not in known:
            raise InvalidParameterError(f"label {name!r} not in this run; labels are {known}")
    if control == target:
        raise InvalidParameterError(f"target and control are the same label {target!r}")
    lab = trace.labels
    t_mask = np.array([x is not None and str(x) == target for x in lab], dtype=bool)
    if control is None:
        c_mask = np.array([x is not None and str(x) != target for x in lab], dtype=bool)
    else:
        c_mask = np.array([x is not None and str(x) == control for x in lab], dtype=bool)
    return _nonempty(trace.select_sequences(t_mask), "target"), _nonempty(
        trace.select_sequences(c_mask), "control"
    )


def split_prompt_sets(trace: Trace, target: str, control: str | None = None) -> tuple[Trace, Trace]:
    """Target = sequences of prompt set `target`; control = prompt set `control` or all others."""
    known = sorted({str(x) for x in trace.prompt_sets.tolist() if x is not None})
    for name in [target] + ([control] if control is not None else []):
        if name not in known:
            raise InvalidParameterError(
                f"prompt set {name!r} not in this run; prompt sets are {known}"
            )
    ps = trace.prompt_sets
    t_mask = np.array([x is not None and str(x) == target for x in ps], dtype=bool)
    if control is None:
        c_mask = ~t_mask
    else:
        c_mask = np.array([x is not None and str(x) == control for x in ps], dtype=bool)
    return _nonempty(trace.select_sequences(t_mask), "target"), _nonempty(
        trace.select_sequences(c_mask), "control"
    )


def split_target_spans(trace: Trace, control: str | None = None) -> tuple[Trace, Trace]:
    """Target = tokens inside the prompts' `target` spans. Control = (None) the other tokens of
    the same prompts, a paired design in which prompts lacking either part are dropped; or the
    tokens of the sequences labelled `control`."""
    if not trace.in_target.any():
        raise InvalidParameterError(
            "no token of this run lies in a target span; give the prompt set a 'target' column"
        )
    if control is not None:
        if control not in trace.label_set:
            raise InvalidParameterError(
                f"label {control!r} not in this run; labels are {trace.label_set}"
            )
        lab = trace.labels
        c_seq = np.array([x is not None and str(x) == control for x in lab], dtype=bool)
        t_tok = trace.in_target & ~np.repeat(c_seq, trace.seq_lengths)
        return _nonempty(trace.select_tokens(t_tok), "target"), _nonempty(
            trace.select_sequences(c_seq), "control"
        )
    seq = trace.seq_index
    has_t = np.bincount(seq, weights=trace.in_target, minlength=trace.num_sequences) > 0
    has_c = np.bincount(seq, weights=~trace.in_target, minlength=trace.num_sequences) > 0
    both = np.repeat(has_t & has_c, trace.seq_lengths)
    return _nonempty(trace.select_tokens(trace.in_target & both), "target"), _nonempty(
        trace.select_tokens(~trace.in_target & both), "control"
    )


SPEC_HELP = (
    "label:NAME (sequences with that label), set:PROMPTSET, run:RUN (all tokens of another run), "
    "target (tokens in target spans) or rest (every token of the run not in the target set)"
)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'label:x' → ('label', 'x'); 'target' / 'rest' → (kind, None). One clear error otherwise."""
    kind, sep, arg = spec.partition(":")
    if kind in ("label", "set", "run") and sep and arg:
        return kind, arg
    if kind in ("target", "rest") and not sep:
        return kind, None
    raise InvalidParameterError(f"cannot read token-set spec {spec!r}; use {SPEC_HELP}")


def token_sets_from_specs(
    trace: Trace | None,
    target: str,
    control: str,
    load_run: Callable[[str], Trace] | None = None,
) -> tuple[Trace, Trace]:
    """Target and control token sets from two specs (see SPEC_HELP) over `trace`; `run:` specs
    are loaded with `load_run`. 'rest' is the complement of the target set within `trace`."""
    tk, ta = parse_spec(target)
    ck, ca = parse_spec(control)
    if tk == "rest":
        raise InvalidParameterError("'rest' can only be the control set; name a target set")
    if tk == ck == "label" or (tk == "label" and ck == "rest"):
        assert trace is not None and ta is not None
        return split_labels(trace, ta, ca)
    if tk == ck == "set" or (tk == "set" and ck == "rest"):
        assert trace is not None and ta is not None
        return split_prompt_sets(trace, ta, ca)
    if tk == "target" and ck in ("rest", "label"):
        assert trace is not None
        return split_target_spans(trace, ca)
    if ck == "rest":
        raise InvalidParameterError(
            "'rest' needs a target of label:NAME, set:NAME or target from the same run"
        )
    return _one_set(trace, tk, ta, load_run, "target"), _one_set(trace, ck, ca, load_run, "control")


def _one_set(
    trace: Trace | None,
    kind: str,
    arg: str | None,
    load_run: Callable[[str], Trace] | None,
    which: str,
) -> Trace:
    if kind == "run":
        if load_run is None:
            raise InvalidParameterError("run: token sets need a database to load the run from")
        return _nonempty(load_run(str(arg)), which)
    if trace is None:
        raise InvalidParameterError(f"the {which} set {kind}:{arg} needs a run to select from")
    if kind == "label":
        if arg not in trace.label_set:
            raise InvalidParameterError(
                f"label {arg!r} not in this run; labels are {trace.label_set}"
            )
        mask = np.array([x is not None and str(x) == arg for x in trace.labels], dtype=bool)
        return _nonempty(trace.select_sequences(mask), which)
    if kind == "set":
        mask = np.array([x is not None and str(x) == arg for x in trace.prompt_sets], dtype=bool)
        if not mask.any():
            known = sorted({str(x) for x in trace.prompt_sets.tolist() if x is not None})
            raise InvalidParameterError(
                f"prompt set {arg!r} not in this run; prompt sets are {known}"
            )
        return _nonempty(trace.select_sequences(mask), which)
    return _nonempty(trace.select_tokens(trace.in_target), which)  # kind == "target"


def _nonempty(t: Trace, which: str) -> Trace:
    if t.num_tokens == 0:
        raise InvalidParameterError(f"the {which} token set is empty; check the selection")
    return t


# ---- per-prompt counts ----------------------------------------------------------------------
def _prompt_counts(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n[S] tokens per prompt, A[S, L·E] tokens selecting each (layer, expert), W[S, L·E] summed
    gate weight (0 where not selected)."""
    s, e, n_layers = trace.num_sequences, trace.num_experts, trace.num_layers
    seq = trace.seq_index
    a = np.zeros((s, n_layers * e), dtype=np.float64)
    w = np.zeros((s, n_layers * e), dtype=np.float64)
    for col in range(n_layers):
        keys = (seq[:, None] * e + trace.experts[:, col, :].astype(np.int64)).ravel()
        a[:, col * e : (col + 1) * e] = np.bincount(keys, minlength=s * e).reshape(s, e)
        wk = trace.weights[:, col, :].astype(np.float64).ravel()
        w[:, col * e : (col + 1) * e] = np.bincount(keys, weights=wk, minlength=s * e).reshape(s, e)
    return trace.seq_lengths.astype(np.float64), a, w


def _unit_keys(trace: Trace) -> list[tuple]:
    """Identity of each prompt: (run, seq_id) within a run; (prompt set, prompt id) across runs
    when both are known, so two runs over the same prompts pair up."""
    if all(p is not None for p in trace.prompt_ids.tolist()):
        return [(ps, pid) for ps, pid in zip(trace.prompt_sets, trace.prompt_ids, strict=True)]
    return [(trace.run_id, int(s)) for s in trace.seq_ids]


def _check_compatible(target: Trace, control: Trace) -> None:
    if target.num_experts != control.num_experts or target.top_k != control.top_k:
        raise InvalidParameterError(
            f"target and control differ in experts/top-k (E={target.num_experts}, "
            f"k={target.top_k} vs E={control.num_experts}, k={control.top_k}); "
            "compare runs of the same model"
        )
    if target.layers != control.layers:
        raise InvalidParameterError(
            f"target and control have different MoE layers ({list(target.layers)} vs "
            f"{list(control.layers)}); select the same layers"
        )
    _nonempty(target, "target")
    _nonempty(control, "control")


def _design(target: Trace, control: Trace) -> tuple[bool, np.ndarray | None]:
    """(paired, order): order[i] = row of control matching target prompt i in a paired design."""
    same_run = target.run_id == control.run_id
    kt = [(target.run_id, int(s)) for s in target.seq_ids] if same_run else _unit_keys(target)
    kc = [(control.run_id, int(s)) for s in control.seq_ids] if same_run else _unit_keys(control)
    st, sc = set(kt), set(kc)
    if len(st) != len(kt) or len(sc) != len(kc):
        raise InvalidParameterError("a prompt appears twice in one token set; deduplicate it")
    common = st & sc
    if not common:
        return False, None
    if st == sc:
        pos = {key: i for i, key in enumerate(kc)}
        return True, np.array([pos[key] for key in kt], dtype=np.int64)
    raise InvalidParameterError(
        f"target and control share {len(common)} prompts but not all of them; use disjoint "
        "prompt sets or the same prompts in both"
    )


# ---- statistics ----------------------------------------------------------------------------
def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values (step-up, monotone, capped at 1) for a flat array of p-values."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def _score(a1, n1, a2, n2):  # noqa: ANN001 - arrays of broadcastable shapes
    with np.errstate(divide="ignore", invalid="ignore"):
        return a1 / n1 - a2 / n2


@dataclass
class _Sets:
    n1: np.ndarray
    x1: np.ndarray
    n2: np.ndarray
    x2: np.ndarray


def _bootstrap(
    d: _Sets, paired: bool, n_boot: int, rng: np.random.Generator, tick: Callable[[int], None]
) -> np.ndarray:
    """[n_boot, L·E] resampled scores: prompts drawn with replacement (multinomial counts)."""
    s1, s2 = len(d.n1), len(d.n2)
    out = np.empty((n_boot, d.x1.shape[1]))
    for start in range(0, n_boot, _BLOCK):
        b = min(_BLOCK, n_boot - start)
        c1 = rng.multinomial(s1, np.full(s1, 1.0 / s1), size=b).astype(np.float64)
        c2 = c1 if paired else rng.multinomial(s2, np.full(s2, 1.0 / s2), size=b).astype(float)
        out[start : start + b] = _score(
            c1 @ d.x1, (c1 @ d.n1)[:, None], c2 @ d.x2, (c2 @ d.n2)[:, None]
        )
        tick(b)
    return out


def _permutation_exceed(
    d: _Sets,
    observed: np.ndarray,
    paired: bool,
    n_perm: int,
    rng: np.random.Generator,
    tick: Callable[[int], None],
) -> np.ndarray:
    """Per (layer, expert), how many permutations give |score| ≥ |observed| (two-sided)."""
    exceed = np.zeros(observed.shape[0], dtype=np.int64)
    thresh = np.abs(observed) - 1e-12 * np.maximum(1.0, np.abs(observed))
    if paired:
        diff_x, diff_n = d.x2 - d.x1, d.n2 - d.n1
        tot_x1, tot_n1 = d.x1.sum(axis=0), d.n1.sum()
        tot_x, tot_n = tot_x1 + d.x2.sum(axis=0), tot_n1 + d.n2.sum()
    else:
        all_x = np.concatenate([d.x1, d.x2])
        all_n = np.concatenate([d.n1, d.n2])
        tot_x, tot_n = all_x.sum(axis=0), all_n.sum()
        s1, s = len(d.n1), len(all_n)
    for start in range(0, n_perm, _BLOCK):
        b = min(_BLOCK, n_perm - start)
        if paired:
            flip = (rng.random((b, len(d.n1))) < 0.5).astype(np.float64)
            x1 = tot_x1 + flip @ diff_x
            n1 = tot_n1 + flip @ diff_n
        else:
            # A random subset of s1 prompts per row: ranks of uniform draws below s1.
            ranks = np.argsort(rng.random((b, s)), axis=1)
            member = np.zeros((b, s), dtype=np.float64)
            np.put_along_axis(member, ranks[:, :s1], 1.0, axis=1)
            x1 = member @ all_x
            n1 = member @ all_n
        perm = _score(x1, n1[:, None], tot_x - x1, (tot_n - n1)[:, None])
        exceed += (np.abs(np.nan_to_num(perm, nan=0.0)) >= thresh).sum(axis=0)
        tick(b)
    return exceed


def localize(
    target: Trace,
    control: Trace,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    weight: bool = False,
    ci: float = 0.95,
    progress: Callable[[int], None] | None = None,
) -> pl.DataFrame:
    """Rank every (layer, expert) by how much more often it fires on target than on control tokens.

    Columns: rank, layer, expert, n1, n2 (tokens), a1, a2 (tokens selecting it), p1, p2, rd =
    p1 − p2, w1, w2 (mean gate weight, 0 when not selected), wd = w1 − w2, score (rd, or wd when
    weight=True), ci_low/ci_high (prompt bootstrap percentile interval of score), p_value
    (two-sided permutation over prompts, (1 + #≥)/(1 + n_perm)), q_value (Benjamini–Hochberg
    across all layer·expert), prompts1, prompts2, paired. Ranked by score, descending, across
    layers. `progress` is called with the number of resamples done (for a progress bar).
    """
    _check_compatible(target, control)
    if n_boot < 1 or n_perm < 1:
        raise InvalidParameterError("--n-boot and --n-perm must be at least 1")
    if not 0.0 < ci < 1.0:
        raise InvalidParameterError(f"ci must be between 0 and 1, got {ci}")
    tick = progress or (lambda _n: None)
    paired, order = _design(target, control)
    n1, a1, w1 = _prompt_counts(target)
    n2, a2, w2 = _prompt_counts(control)
    if paired:
        assert order is not None
        n2, a2, w2 = n2[order], a2[order], w2[order]
    e, n_layers = target.num_experts, target.num_layers
    tn1, tn2 = n1.sum(), n2.sum()
    ta1, ta2 = a1.sum(axis=0), a2.sum(axis=0)
    tw1, tw2 = w1.sum(axis=0), w2.sum(axis=0)
    rd = ta1 / tn1 - ta2 / tn2
    wd = tw1 / tn1 - tw2 / tn2
    sets = _Sets(n1, w1, n2, w2) if weight else _Sets(n1, a1, n2, a2)
    observed = wd if weight else rd
    rng = np.random.default_rng(seed)
    boot = _bootstrap(sets, paired, n_boot, rng, tick)
    alpha = (1.0 - ci) / 2.0
    # np.quantile is vectorized; nanquantile loops per column, so use it only when needed.
    quantile = np.nanquantile if np.isnan(boot).any() else np.quantile
    lo, hi = quantile(boot, [alpha, 1.0 - alpha], axis=0)
    exceed = _permutation_exceed(sets, observed, paired, n_perm, rng, tick)
    p_value = (1.0 + exceed) / (1.0 + n_perm)
    q_value = benjamini_hochberg(p_value)
    m = n_layers * e
    layer_col = np.repeat(np.asarray(target.layers, dtype=np.int32), e)
    expert_col = np.tile(np.arange(e, dtype=np.int32), n_layers)
    # Rank by score descending, ties by layer then expert (numpy: no polars sort per call).
    order = np.lexsort((expert_col, layer_col, -observed))
    cols = {
        "rank": np.arange(1, m + 1, dtype=np.int32),
        "layer": layer_col,
        "expert": expert_col,
        "n1": np.full(m, int(tn1), dtype=np.int64),
        "n2": np.full(m, int(tn2), dtype=np.int64),
        "a1": np.rint(ta1).astype(np.int64),
        "a2": np.rint(ta2).astype(np.int64),
        "p1": ta1 / tn1,
        "p2": ta2 / tn2,
        "rd": rd,
        "w1": tw1 / tn1,
        "w2": tw2 / tn2,
        "wd": wd,
        "score": observed,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p_value,
        "q_value": q_value,
        "prompts1": np.full(m, len(n1), dtype=np.int64),
        "prompts2": np.full(m, len(n2), dtype=np.int64),
        "paired": np.full(m, paired),
    }
    return pl.DataFrame({k: (v if k == "rank" else v[order]) for k, v in cols.items()})


def steering_spec_from_ranking(
    result: pl.DataFrame,
    top: int = 10,
    action: str = "deactivate",
    q_max: float | None = 0.05,
    mode: str = "reroute",
) -> dict:
    """A JSON-able steering spec from a `localize` result: the `top` best-ranked experts with
    q ≤ q_max (None = no filter) and positive score. The steering module validates it."""
    if top < 1:
        raise InvalidParameterError(f"top must be at least 1, got {top}")
    sel = result.sort("rank").filter(pl.col("score") > 0)
    if q_max is not None:
        sel = sel.filter(pl.col("q_value") <= q_max)
    edits = [
        {"layer": int(r["layer"]), "expert": int(r["expert"]), "action": action}
        for r in sel.head(top).iter_rows(named=True)
    ]
    return {"edits": edits, "mode": mode}
