"""Functional localization (DESIGN.md §4.4): which (layer, expert) fire more on a target token
set than on a control token set, with prompt-level uncertainty.

The unit of resampling is the prompt (a sequence of the run), because tokens of one prompt are
not independent. Everything runs on per-prompt count matrices [prompts, E] per layer: a bootstrap
or a permutation is a weight matrix [B, prompts] times those counts, so 1,000 resamples are a few
matrix products, not 1,000 passes over the tokens.

Streaming (DESIGN §7): a token set is a rule (`TokenRule`: sequences by label or prompt set,
tokens by target span) over a run given as a `Trace` or a `TraceSource`; a `Reduction` reads the
run in chunks of whole sequences and keeps, per prompt of each set, its token count and its
per-(layer, expert) counts (and gate-weight sums), concatenated in sequence order, so the result
does not depend on how the run is cut. When those matrices for every layer at once would exceed
`PROMPT_MATRIX_BUDGET` bytes, layers are processed in groups, one pass per group; the random
draws over prompts are replayed from the seed for every group, so each layer sees the same
bootstrap and permutation indices as in a single pass.

Two designs:
- unpaired: target and control are disjoint sets of prompts (two labels, two prompt sets, two runs
  of different prompts). Bootstrap resamples prompts within each set; the permutation test
  shuffles which prompts are target and which are control (prompts kept whole).
- paired: every prompt contributes to both sets (target spans vs the rest of the same prompts; two
  runs over the same prompts). Bootstrap resamples prompts once for both sets; the permutation
  test swaps each prompt's target and control parts at random.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import polars as pl

from routescope.analysis.streaming import Executor, Progress, Reduction, run_reduction
from routescope.core.errors import InvalidParameterError
from routescope.core.source import (
    DEFAULT_CHUNK_ROWS,
    InMemorySource,
    SourceInfo,
    TraceSource,
    as_source,
)
from routescope.core.trace import Trace

_BLOCK = 250  # resamples per matrix product (bounds memory at [250, S] and [250, L·E])
_BLOCK_ENTRIES = 1 << 23  # ... and at most this many [block, prompts] entries per block
#: Bytes the per-prompt matrices of one pass may take (about 40 bytes per prompt × layer ×
#: expert with the resampling's copies); beyond it layers are processed in groups.
PROMPT_MATRIX_BUDGET = 1 << 30
_BYTES_PER_ENTRY = 40
SPANS = ("all", "target", "rest")


# ---- token sets -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenRule:
    """Which tokens of a run form a token set, applied to each chunk as it is read.

    Sequences: all (field None), or those whose `field` ('label' or 'prompt_set') is one of
    `values` (exclude=False), or is none of them, missing included (exclude=True). Tokens of those
    sequences: all, only inside the `target` spans, or only outside them ('rest'); both_parts
    keeps only sequences that have tokens inside and outside the spans (a paired design).
    """

    field: str | None = None
    values: tuple[str, ...] = ()
    exclude: bool = False
    span: str = "all"
    both_parts: bool = False

    def seq_mask(self, chunk: Trace) -> np.ndarray:
        """bool[S]: the chunk's sequences this rule reads tokens from."""
        if self.field is None:
            return np.ones(chunk.num_sequences, dtype=bool)
        per_seq = chunk.labels if self.field == "label" else chunk.prompt_sets
        wanted = set(self.values)
        hit = np.array([x is not None and str(x) in wanted for x in per_seq.tolist()], dtype=bool)
        return ~hit if self.exclude else hit

    def mask(self, chunk: Trace) -> np.ndarray:
        """bool[N]: the chunk's token rows in the set."""
        seq = self.seq_mask(chunk)
        if self.both_parts:
            idx = chunk.seq_index
            n = chunk.num_sequences
            has_t = np.bincount(idx, weights=chunk.in_target, minlength=n) > 0
            has_c = np.bincount(idx, weights=~chunk.in_target, minlength=n) > 0
            seq = seq & has_t & has_c
        tok = np.repeat(seq, chunk.seq_lengths)
        if self.span == "target":
            tok &= chunk.in_target
        elif self.span == "rest":
            tok &= ~chunk.in_target
        return tok


@dataclass(frozen=True, eq=False)
class TokenSet:
    """A token set for `localize`: the tokens of `data` (a Trace or a run's source) that `rule`
    keeps. Nothing is read until `localize` runs."""

    data: Trace | TraceSource
    rule: TokenRule = field(default_factory=TokenRule)

    @property
    def source(self) -> TraceSource:
        return as_source(self.data)

    def to_trace(self) -> Trace:
        """The set's tokens as a Trace (small in-memory runs: tests, notebooks)."""
        trace = self.data.trace if isinstance(self.data, InMemorySource) else self.data
        if not isinstance(trace, Trace):
            raise InvalidParameterError(
                "to_trace() needs a run in memory; pass the token set to localize() instead"
            )
        return trace.select_tokens(self.rule.mask(trace))


def _as_token_set(x: Trace | TraceSource | TokenSet) -> TokenSet:
    return x if isinstance(x, TokenSet) else TokenSet(x)


def _checked(ts: TokenSet, which: str) -> TokenSet:
    """A Trace's set is checked for emptiness at once; a source's when localize reads it."""
    if isinstance(ts.data, Trace) and not ts.rule.mask(ts.data).any():
        raise InvalidParameterError(_empty_message(ts.rule, which))
    return ts


def _empty_message(rule: TokenRule, which: str) -> str:
    if rule.span == "target" and which == "target":
        return "no token of this run lies in a target span; give the prompt set a 'target' column"
    return f"the {which} token set is empty; check the selection"


def _check_label(info: SourceInfo, name: str) -> None:
    if name not in info.labels:
        raise InvalidParameterError(
            f"label {name!r} not in this run; labels are {list(info.labels)}"
        )


def _check_prompt_set(info: SourceInfo, name: str) -> None:
    if name not in info.prompt_sets:
        raise InvalidParameterError(
            f"prompt set {name!r} not in this run; prompt sets are {list(info.prompt_sets)}"
        )


def split_labels(
    data: Trace | TraceSource, target: str, control: str | None = None
) -> tuple[TokenSet, TokenSet]:
    """Target = sequences labelled `target`; control = those labelled `control`, or (None) every
    other labelled sequence."""
    info = as_source(data).info
    for name in [target] + ([control] if control is not None else []):
        _check_label(info, name)
    if control == target:
        raise InvalidParameterError(f"target and control are the same label {target!r}")
    others = tuple(x for x in info.labels if x != target) if control is None else (control,)
    if not others:
        raise InvalidParameterError("the control token set is empty; check the selection")
    return _checked(TokenSet(data, TokenRule("label", (target,))), "target"), _checked(
        TokenSet(data, TokenRule("label", others)), "control"
    )


def split_prompt_sets(
    data: Trace | TraceSource, target: str, control: str | None = None
) -> tuple[TokenSet, TokenSet]:
    """Target = sequences of prompt set `target`; control = prompt set `control` or all others."""
    info = as_source(data).info
    for name in [target] + ([control] if control is not None else []):
        _check_prompt_set(info, name)
    t_rule = TokenRule("prompt_set", (target,))
    c_rule = (
        TokenRule("prompt_set", (target,), exclude=True)
        if control is None
        else TokenRule("prompt_set", (control,))
    )
    return _checked(TokenSet(data, t_rule), "target"), _checked(TokenSet(data, c_rule), "control")


def split_target_spans(
    data: Trace | TraceSource, control: str | None = None
) -> tuple[TokenSet, TokenSet]:
    """Target = tokens inside the prompts' `target` spans. Control = (None) the other tokens of
    the same prompts, a paired design in which prompts lacking either part are dropped; or the
    tokens of the sequences labelled `control`."""
    if isinstance(data, Trace) and not data.in_target.any():
        raise InvalidParameterError(
            "no token of this run lies in a target span; give the prompt set a 'target' column"
        )
    if control is not None:
        _check_label(as_source(data).info, control)
        t_rule = TokenRule("label", (control,), exclude=True, span="target")
        c_rule = TokenRule("label", (control,))
    else:
        t_rule = TokenRule(span="target", both_parts=True)
        c_rule = TokenRule(span="rest", both_parts=True)
    return _checked(TokenSet(data, t_rule), "target"), _checked(TokenSet(data, c_rule), "control")


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
    data: Trace | TraceSource | None,
    target: str,
    control: str,
    load_run: Callable[[str], Trace | TraceSource] | None = None,
) -> tuple[TokenSet, TokenSet]:
    """Target and control token sets from two specs (see SPEC_HELP) over `data`; `run:` specs
    are opened with `load_run` (a Trace or, for streaming, `store.source(run)`). 'rest' is the
    complement of the target set within `data`."""
    tk, ta = parse_spec(target)
    ck, ca = parse_spec(control)
    if tk == "rest":
        raise InvalidParameterError("'rest' can only be the control set; name a target set")
    if tk == ck == "label" or (tk == "label" and ck == "rest"):
        assert data is not None and ta is not None
        return split_labels(data, ta, ca)
    if tk == ck == "set" or (tk == "set" and ck == "rest"):
        assert data is not None and ta is not None
        return split_prompt_sets(data, ta, ca)
    if tk == "target" and ck in ("rest", "label"):
        assert data is not None
        return split_target_spans(data, ca)
    if ck == "rest":
        raise InvalidParameterError(
            "'rest' needs a target of label:NAME, set:NAME or target from the same run"
        )
    return _one_set(data, tk, ta, load_run, "target"), _one_set(data, ck, ca, load_run, "control")


def _one_set(
    data: Trace | TraceSource | None,
    kind: str,
    arg: str | None,
    load_run: Callable[[str], Trace | TraceSource] | None,
    which: str,
) -> TokenSet:
    if kind == "run":
        if load_run is None:
            raise InvalidParameterError("run: token sets need a database to load the run from")
        return _checked(TokenSet(load_run(str(arg))), which)
    if data is None:
        raise InvalidParameterError(f"the {which} set {kind}:{arg} needs a run to select from")
    info = as_source(data).info
    if kind == "label":
        _check_label(info, str(arg))
        return _checked(TokenSet(data, TokenRule("label", (str(arg),))), which)
    if kind == "set":
        _check_prompt_set(info, str(arg))
        return _checked(TokenSet(data, TokenRule("prompt_set", (str(arg),))), which)
    return _checked(TokenSet(data, TokenRule(span="target")), which)  # kind == "target"


# ---- per-prompt counts (the streamed part) -----------------------------------------------------
@dataclass
class PromptCounts:
    """Per prompt of a token set, in the run's sequence order: identity, tokens n, and per
    (layer, expert) of a layer group the tokens selecting it (a) and their gate-weight sum (w,
    None when the run has no weights). Columns of a and w: layer-major, E per layer."""

    run_id: str | None
    seq_ids: np.ndarray
    prompt_sets: np.ndarray
    prompt_ids: np.ndarray
    n: np.ndarray
    a: np.ndarray
    w: np.ndarray | None

    @property
    def num_prompts(self) -> int:
        return len(self.n)


def _prompt_part(chunk: Trace, rule: TokenRule, e: int, weights: bool) -> dict[str, Any]:
    """One chunk's per-prompt counts for one rule (prompts without a selected token dropped)."""
    mask = rule.mask(chunk)
    seq = chunk.seq_index[mask]
    n_all = np.bincount(seq, minlength=chunk.num_sequences).astype(np.int64)
    keep = n_all > 0
    p = int(keep.sum())
    rows = (np.cumsum(keep) - 1)[seq]
    ex = chunk.experts[mask]
    wts = chunk.require_weights("gate-weight sums")[mask] if weights else None
    g = chunk.num_layers
    a = np.empty((p, g * e), dtype=np.int32)
    w = np.empty((p, g * e), dtype=np.float64) if weights else None
    for col in range(g):
        keys = (rows[:, None] * e + ex[:, col, :].astype(np.int64)).ravel()
        a[:, col * e : (col + 1) * e] = np.bincount(keys, minlength=p * e).reshape(p, e)
        if w is not None and wts is not None:
            wk = wts[:, col, :].astype(np.float64).ravel()
            w[:, col * e : (col + 1) * e] = np.bincount(keys, weights=wk, minlength=p * e).reshape(
                p, e
            )
    return {
        "seq_ids": chunk.seq_ids[keep],
        "prompt_sets": chunk.prompt_sets[keep],
        "prompt_ids": chunk.prompt_ids[keep],
        "n": n_all[keep],
        "a": a,
        "w": w,
    }


def _prompt_kernel(
    chunk: Trace, *, rules: tuple[TokenRule, ...], e: int, weights: bool
) -> list[list[dict[str, Any]]]:
    return [[_prompt_part(chunk, rule, e, weights)] for rule in rules]


def _prompt_merge(a: list[list[Any]], b: list[list[Any]]) -> list[list[Any]]:
    """Per rule, the parts in sequence order (concatenated once, in finalize)."""
    return [x + y for x, y in zip(a, b, strict=True)]


def _prompt_empty(n_rules: int) -> list[list[dict[str, Any]]]:
    return [[] for _ in range(n_rules)]


def _prompt_finalize(
    parts: list[list[dict[str, Any]]], *, run_id: str | None, width: int, weights: bool
) -> list[PromptCounts]:
    out = []
    for rule_parts in parts:

        def cat(key: str, dtype: Any, shape: tuple[int, ...], ps: list = rule_parts) -> np.ndarray:
            if not ps:
                return np.zeros(shape, dtype=dtype)
            return np.concatenate([p[key] for p in ps])

        out.append(
            PromptCounts(
                run_id=run_id,
                seq_ids=cat("seq_ids", np.int64, (0,)),
                prompt_sets=cat("prompt_sets", object, (0,)),
                prompt_ids=cat("prompt_ids", object, (0,)),
                n=cat("n", np.int64, (0,)),
                a=cat("a", np.int32, (0, width)),
                w=cat("w", np.float64, (0, width)) if weights else None,
            )
        )
    return out


def prompt_counts_reduction(
    info: SourceInfo,
    rules: Sequence[TokenRule],
    layers: Sequence[int] | None = None,
    weights: bool | None = None,
) -> Reduction[list[list[dict[str, Any]]], list[PromptCounts]]:
    """Per-prompt counts of every rule's token set over `layers`, in one pass over the run.
    `weights`: also sum gate weights (default: when the run has them)."""
    sel = info.check_layers(layers)
    use_w = info.has_weights if weights is None else bool(weights)
    rules = tuple(rules)
    return Reduction(
        kernel=partial(_prompt_kernel, rules=rules, e=info.num_experts, weights=use_w),
        merge=_prompt_merge,
        finalize=partial(
            _prompt_finalize, run_id=info.run_id, width=len(sel) * info.num_experts, weights=use_w
        ),
        empty=partial(_prompt_empty, len(rules)),
        layers=sel,
        weights=use_w,
        name="localization counts",
    )


def prompt_counts(
    data: Trace | TraceSource,
    rules: Sequence[TokenRule],
    *,
    layers: Sequence[int] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> list[PromptCounts]:
    """Per-prompt count matrices of each rule's token set (see `PromptCounts`)."""
    source = as_source(data)
    return run_reduction(
        source,
        prompt_counts_reduction(source.info, rules, layers),
        max_rows=max_rows,
        progress=progress,
        executor=executor,
    )


def _narrowed(source: TraceSource, rules: Sequence[TokenRule]) -> TraceSource:
    """The source narrowed to the labels its rules read, when they only read some labels (a
    store then reads only those sequences)."""
    if not rules or not all(r.field == "label" and not r.exclude and r.values for r in rules):
        return source
    labels = sorted({v for r in rules for v in r.values})
    if set(labels) >= set(source.info.labels):
        return source
    return source.select(labels=labels)


def _unit_keys(pc: PromptCounts) -> list[tuple]:
    """Identity of each prompt: (run, seq_id) within a run; (prompt set, prompt id) across runs
    when both are known, so two runs over the same prompts pair up."""
    if all(p is not None for p in pc.prompt_ids.tolist()):
        return list(zip(pc.prompt_sets.tolist(), pc.prompt_ids.tolist(), strict=True))
    return [(pc.run_id, int(s)) for s in pc.seq_ids]


def _check_compatible(target: SourceInfo, control: SourceInfo) -> None:
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


def _design(t: PromptCounts, c: PromptCounts, same_run: bool) -> tuple[bool, np.ndarray | None]:
    """(paired, order): order[i] = row of control matching target prompt i in a paired design."""
    kt = [(t.run_id, int(s)) for s in t.seq_ids] if same_run else _unit_keys(t)
    kc = [(c.run_id, int(s)) for s in c.seq_ids] if same_run else _unit_keys(c)
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


def _block(prompts: int) -> int:
    """Resamples per matrix product: 250, fewer when [block, prompts] would be large. Depends on
    the number of prompts only, so every layer group draws the same random numbers."""
    return max(1, min(_BLOCK, _BLOCK_ENTRIES // max(1, prompts)))


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
    block = _block(s1 + s2)
    for start in range(0, n_boot, block):
        b = min(block, n_boot - start)
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
    block = _block(len(d.n1) + len(d.n2))
    for start in range(0, n_perm, block):
        b = min(block, n_perm - start)
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


def _layer_groups(layers: tuple[int, ...], prompts: int, e: int) -> list[tuple[int, ...]]:
    """Consecutive layer groups whose per-prompt matrices fit `PROMPT_MATRIX_BUDGET`."""
    per_layer = max(1, prompts) * e * _BYTES_PER_ENTRY
    size = max(1, min(len(layers), PROMPT_MATRIX_BUDGET // per_layer))
    return [layers[i : i + size] for i in range(0, len(layers), size)]


def _no_weights(info: SourceInfo) -> InvalidParameterError:
    return InvalidParameterError(
        f"weight-based localization needs gate weights, and run {info.run_id or ''} has none (an "
        "imported trace that records experts only); use an expert-count variant instead"
    )


class _Tally:
    """One progress bar over several passes and the resampling: (done, total) work units."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress, self.total, self.done = progress, max(1, total), 0

    def pass_progress(self) -> Progress | None:
        if self.progress is None:
            return None
        base, report = self.done, self.progress
        return lambda done, _total: report(min(base + done, self.total), self.total)

    def ticks(self, per: int) -> Callable[[int], None]:
        """tick(b): `b` resamples done, `per` work units each."""
        return lambda b: self.advance(b * per)

    def advance(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


def _group_stats(
    t: PromptCounts,
    c: PromptCounts,
    paired: bool,
    order: np.ndarray | None,
    weight: bool,
    n_boot: int,
    n_perm: int,
    seed: int,
    ci: float,
    tick: Callable[[int], None],
) -> dict[str, np.ndarray]:
    """Observed scores, bootstrap CI and permutation exceedances for one layer group; the random
    draws come from `seed` alone, so they are the same for every group."""
    n1, a1, w1 = t.n.astype(np.float64), t.a.astype(np.float64), t.w
    n2, a2, w2 = c.n.astype(np.float64), c.a.astype(np.float64), c.w
    if paired:
        assert order is not None
        n2, a2 = n2[order], a2[order]
        w2 = None if w2 is None else w2[order]
    tn1, tn2 = n1.sum(), n2.sum()
    ta1, ta2 = a1.sum(axis=0), a2.sum(axis=0)
    if w1 is not None and w2 is not None:
        tw1, tw2 = w1.sum(axis=0), w2.sum(axis=0)
    else:
        tw1 = tw2 = np.full(a1.shape[1], np.nan)
    rd = ta1 / tn1 - ta2 / tn2
    wd = tw1 / tn1 - tw2 / tn2
    if weight:
        assert w1 is not None and w2 is not None
        sets, observed = _Sets(n1, w1, n2, w2), wd
    else:
        sets, observed = _Sets(n1, a1, n2, a2), rd
    rng = np.random.default_rng(seed)
    boot = _bootstrap(sets, paired, n_boot, rng, tick)
    alpha = (1.0 - ci) / 2.0
    lo = np.empty(boot.shape[1])
    hi = np.empty(boot.shape[1])
    nan_col = np.isnan(boot).any(axis=0)
    # np.quantile is vectorized; nanquantile loops per column, so use it only where needed.
    if (~nan_col).any():
        lo[~nan_col], hi[~nan_col] = np.quantile(boot[:, ~nan_col], [alpha, 1.0 - alpha], axis=0)
    if nan_col.any():
        lo[nan_col], hi[nan_col] = np.nanquantile(boot[:, nan_col], [alpha, 1.0 - alpha], axis=0)
    del boot
    exceed = _permutation_exceed(sets, observed, paired, n_perm, rng, tick)
    return {
        "a1": ta1,
        "a2": ta2,
        "w1": tw1 / tn1,
        "w2": tw2 / tn2,
        "rd": rd,
        "wd": wd,
        "score": observed,
        "ci_low": lo,
        "ci_high": hi,
        "exceed": exceed,
    }


def localize(
    target: Trace | TraceSource | TokenSet,
    control: Trace | TraceSource | TokenSet,
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    weight: bool = False,
    ci: float = 0.95,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """Rank every (layer, expert) by how much more often it fires on target than on control tokens.

    `target` and `control` are token sets (`split_labels`, `split_prompt_sets`,
    `split_target_spans`, `token_sets_from_specs`) or whole runs (a Trace or a source: every
    token); sets over the same run are read in one pass, chunk by chunk.

    Columns: rank, layer, expert, n1, n2 (tokens), a1, a2 (tokens selecting it), p1, p2, rd =
    p1 − p2, w1, w2 (mean gate weight, 0 when not selected; NaN when the run has no weights),
    wd = w1 − w2, score (rd, or wd when weight=True), ci_low/ci_high (prompt bootstrap percentile
    interval of score), p_value (two-sided permutation over prompts, (1 + #≥)/(1 + n_perm)),
    q_value (Benjamini–Hochberg across all layer·expert), prompts1, prompts2, paired. Ranked by
    score, descending, across layers. `progress(done, total)` follows reading and resampling.
    """
    sets = [_as_token_set(target), _as_token_set(control)]
    if n_boot < 1 or n_perm < 1:
        raise InvalidParameterError("--n-boot and --n-perm must be at least 1")
    if not 0.0 < ci < 1.0:
        raise InvalidParameterError(f"ci must be between 0 and 1, got {ci}")
    sources = [ts.source for ts in sets]
    infos = [s.info for s in sources]
    _check_compatible(infos[0], infos[1])
    for info, which in zip(infos, ("target", "control"), strict=True):
        if info.num_tokens == 0:
            raise InvalidParameterError(f"the {which} token set is empty; check the selection")
        if weight and not info.has_weights:
            raise _no_weights(info)
    # One pass per run (and layer group) for the sets over it.
    if sets[0].data is sets[1].data:
        jobs = [(_narrowed(sources[0], [sets[0].rule, sets[1].rule]), [0, 1])]
    else:
        jobs = [(_narrowed(sources[i], [sets[i].rule]), [i]) for i in (0, 1)]
    same_run = infos[0].run_id == infos[1].run_id
    e, layers = infos[0].num_experts, infos[0].layers
    # per-prompt matrix rows: at most every sequence of a run, once per set read from it
    prompts = sum(src.info.num_sequences * len(idx) for src, idx in jobs)
    groups = _layer_groups(layers, prompts, e)
    resample_work = (n_boot + n_perm) * max(1, prompts)
    total = sum(src.info.num_tokens for src, _ in jobs) * len(layers) + resample_work * len(layers)
    tally = _Tally(progress, total)
    stats: list[dict[str, np.ndarray]] = []
    paired, order, sizes = False, None, (0, 0, 0, 0)
    for gi, group in enumerate(groups):
        counts: list[PromptCounts | None] = [None, None]
        for src, idx in jobs:
            red = prompt_counts_reduction(src.info, [sets[i].rule for i in idx], group)
            got = run_reduction(
                src, red, max_rows=max_rows, progress=tally.pass_progress(), executor=executor
            )
            tally.advance(src.info.num_tokens * len(group))
            for i, pc in zip(idx, got, strict=True):
                counts[i] = pc
        t, c = counts
        assert t is not None and c is not None
        if gi == 0:
            for pc, ts, which in ((t, sets[0], "target"), (c, sets[1], "control")):
                if pc.num_prompts == 0:
                    raise InvalidParameterError(_empty_message(ts.rule, which))
            paired, order = _design(t, c, same_run)
            sizes = (int(t.n.sum()), int(c.n.sum()), t.num_prompts, c.num_prompts)
        stats.append(
            _group_stats(
                t,
                c,
                paired,
                order,
                weight,
                n_boot,
                n_perm,
                seed,
                ci,
                tally.ticks(max(1, prompts) * len(group)),
            )
        )
        del counts, t, c
    col = {key: np.concatenate([s[key] for s in stats]) for key in stats[0]}
    tn1, tn2, prompts1, prompts2 = sizes
    p_value = (1.0 + col["exceed"]) / (1.0 + n_perm)
    q_value = benjamini_hochberg(p_value)
    m = len(layers) * e
    layer_col = np.repeat(np.asarray(layers, dtype=np.int32), e)
    expert_col = np.tile(np.arange(e, dtype=np.int32), len(layers))
    # Rank by score descending, ties by layer then expert (numpy: no polars sort per call).
    rank_order = np.lexsort((expert_col, layer_col, -col["score"]))
    cols = {
        "rank": np.arange(1, m + 1, dtype=np.int32),
        "layer": layer_col,
        "expert": expert_col,
        "n1": np.full(m, tn1, dtype=np.int64),
        "n2": np.full(m, tn2, dtype=np.int64),
        "a1": np.rint(col["a1"]).astype(np.int64),
        "a2": np.rint(col["a2"]).astype(np.int64),
        "p1": col["a1"] / float(tn1),
        "p2": col["a2"] / float(tn2),
        "rd": col["rd"],
        "w1": col["w1"],
        "w2": col["w2"],
        "wd": col["wd"],
        "score": col["score"],
        "ci_low": col["ci_low"],
        "ci_high": col["ci_high"],
        "p_value": p_value,
        "q_value": q_value,
        "prompts1": np.full(m, prompts1, dtype=np.int64),
        "prompts2": np.full(m, prompts2, dtype=np.int64),
        "paired": np.full(m, paired),
    }
    return pl.DataFrame({k: (v if k == "rank" else v[rank_order]) for k, v in cols.items()})


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
