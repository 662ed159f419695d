"""Prefetch predictability (DESIGN §9): how well can a system name a token's experts ahead of time?

A predictor ranks, for token t at MoE layer l, the experts it expects, using only what is known
when the prefetch must be issued; P_m is its top m. Against the true set S (k experts):
recall@m = |P_m ∩ S| / k and precision@m = |P_m ∩ S| / m, averaged over the tokens that have a
prediction (`covered`; `coverage` = covered / tokens says how many do), per layer and pooled, per
distance d and width m, prefill and decode apart.

Predictors live in one table (`registered()`, like the cache policies of
`routescope.analysis.policies`): a name or a pattern (`window-<W>`), a one-line description,
what it needs (nothing, the recorded speculative rankings, a fit on a train split, or the truth)
and its `predict` function. `speculative-<d>` and `transition-<d>` take the distance d as their
parameter; written bare (`speculative`, `transition`) they run at every asked distance.

- `speculative-d`: layer l's router applied to the router input of layer l − d of the same token,
  as recorded by `routescope collect … --speculative D` (top-m rankings; −1 where l − d does not
  exist: no prediction). d counts model layers, as recorded.
- `previous-token`: the experts of token t − 1 at layer l (rank order) = `window-1`.
- `window-W`: experts of layer l over tokens t − W … t − 1 of the sequence, by request count, then
  most recent use, then rank at that use, then id.
- `transition-d`: experts of layer l ranked by Σ_{a ∈ S(t, l−d)} P(e at l | a at l − d), with
  counts fitted on the train sequences only (ties: the expert's train frequency at l, then id);
  d counts MoE layers. The split is deterministic by sequence id (`is_train`): a sequence is in
  the train set when a hash of its id falls below `train_split`; fitted predictors are evaluated
  on held-out sequences only, and with `evaluate="auto"` every predictor is (so rows compare on
  the same tokens).
- `oracle`: S itself (recall 1 at m ≥ k): the upper bound.

Streaming (DESIGN §7): predictions never cross sequences, so the run is read in chunks of whole
sequences; partials are integer sums of hits, predicted experts, covered and evaluated tokens per
(predictor, phase, layer, width). A fitted predictor takes two passes, each a `Reduction`: the fit
(pair counts on train sequences), then the evaluation. Results do not depend on the chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import polars as pl
from numba import njit

from routescope.analysis.streaming import (
    Executor,
    Progress,
    Reduction,
    add_arrays,
    run_reduction,
)
from routescope.core.errors import InvalidParameterError
from routescope.core.registry import Named, Registry
from routescope.core.source import DEFAULT_CHUNK_ROWS, SourceInfo, TraceSource, as_source
from routescope.core.trace import PHASES, Trace

#: What a predictor needs, in words (the registry's `needs` column).
NEEDS: dict[str, str] = {
    "nothing": "the routing of earlier tokens only",
    "speculative": "speculative rankings recorded at collection (collect --speculative D)",
    "fit": "counts fitted on a train split of sequences (evaluated on held-out ones)",
    "truth": "the true routing (an upper bound, not a real predictor)",
}
PHASE_CHOICES = ("split", "all", *PHASES)
EVALUATE = ("auto", "heldout", "all")
DEFAULT_TRAIN_SPLIT = 0.5
RECORD_HINT = "record them with `routescope collect … --speculative D`"

#: predict(chunk, spec, width, fitted) -> int32[N, L, width], expert ids in rank order, -1 = none
PredictFn = Callable[[Trace, "PredictorSpec", int, "TransitionFit | None"], np.ndarray]


# ---- the held-out split ----------------------------------------------------------------------------
def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of uint64 values (wrapping arithmetic): a fixed, well-mixed hash."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def check_train_split(train_split: float) -> float:
    """A fraction strictly between 0 and 1, or one clear error."""
    f = float(train_split)
    if not 0.0 < f < 1.0:
        raise InvalidParameterError(
            f"train split {train_split} must lie strictly between 0 and 1 (e.g. 0.5): fitted "
            "predictors need train and held-out sequences"
        )
    return f


def is_train(seq_ids: np.ndarray, train_split: float) -> np.ndarray:
    """bool[S]: the sequence is in the train split. Decided by a hash of its id alone, so the
    same sequence falls on the same side however the run is cut, filtered or ordered."""
    ids = np.asarray(seq_ids, dtype=np.int64).astype(np.uint64)
    u = (_mix64(ids) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    return u < float(train_split)


# ---- the predictor registry ------------------------------------------------------------------------
@dataclass(frozen=True)
class Predictor(Named):
    """One registered predictor (see the module docstring for each built-in one).

    name: a name or a pattern `prefix-<P>` (P an integer >= param_min; `routescope.core.registry.
    Named`); needs: a key of NEEDS; distance_param: the pattern's integer is the distance d, and
    the bare prefix name runs at every asked distance; same_token: the prediction uses the same
    token's state, so a prefetch can be issued no earlier than the token's first MoE layer
    (speculative, transition); example: the parameter in the default set and examples.
    """

    name: str
    description: str
    needs: str
    predict: PredictFn = field(repr=False)
    default: bool = True
    example: int = 1
    param_min: int = 1
    distance_param: bool = False
    same_token: bool = False

    def __post_init__(self) -> None:
        if self.needs not in NEEDS:
            raise ValueError(f"predictor {self.name}: needs must be one of {tuple(NEEDS)}")
        self.check_name("predictor")

    @property
    def default_name(self) -> str:
        """The name in the default set: the bare prefix for distance predictors ('speculative'),
        'window-8' for other patterns, the name otherwise."""
        if self.is_pattern and self.distance_param:
            return self.prefix.rstrip("-")
        return super().default_name

    def match(self, name: str) -> int | None:
        """The parameter if `name` is this predictor (0: a bare distance name, or a plain
        name), else None."""
        if self.is_pattern and self.distance_param and name == self.prefix.rstrip("-"):
            return 0
        return super().match(name)


_REGISTRY: Registry[Predictor] = Registry("predictor")


def register(predictor: Predictor) -> Predictor:
    """Add a predictor to the table (a name may be registered once)."""
    return _REGISTRY.register(predictor)


def register_predictor(
    name: str,
    *,
    description: str,
    needs: str = "nothing",
    default: bool = True,
    example: int = 1,
    param_min: int = 1,
    distance_param: bool = False,
    same_token: bool = False,
) -> Callable[[PredictFn], PredictFn]:
    """Decorator: register the decorated predict function as predictor `name`."""
    return _REGISTRY.decorator(
        lambda fn: Predictor(
            name=name,
            description=description,
            needs=needs,
            predict=fn,
            default=default,
            example=example,
            param_min=param_min,
            distance_param=distance_param,
            same_token=same_token,
        )
    )


def registered() -> list[Predictor]:
    """Every predictor, in registration order."""
    return _REGISTRY.entries()


def valid_names() -> str:
    """The names as errors and help list them."""
    return _REGISTRY.valid_names()


def get_predictor(name: str) -> tuple[Predictor, int]:
    """(predictor, parameter) for a name such as 'window-8' or 'speculative-2'; one clear error
    listing the valid names otherwise."""
    return _REGISTRY.lookup(name)


def default_predictors(info: SourceInfo | None = None) -> tuple[str, ...]:
    """The default set; speculative predictors only when `info` says rankings were recorded."""
    out = []
    for p in _REGISTRY.values():
        if not p.default:
            continue
        if p.needs == "speculative" and (info is None or not info.speculative_distances):
            continue
        out.append(p.default_name)
    return tuple(out)


def needs_speculative(specs: Sequence[PredictorSpec]) -> bool:
    """Whether a spec reads the recorded speculative rankings (its reduction asks the source
    for them: `Reduction.speculative`)."""
    return any(s.predictor.needs == "speculative" for s in specs)


@dataclass(frozen=True)
class PredictorSpec:
    """One concrete predictor to evaluate: its row name, the registry entry, the pattern's
    parameter and the distance it predicts from (None for predictors without one)."""

    name: str
    predictor: Predictor
    param: int
    distance: int | None

    @property
    def fitted(self) -> bool:
        return self.predictor.needs == "fit"


def resolve_predictors(
    names: Sequence[str], distances: Sequence[int], info: SourceInfo
) -> list[PredictorSpec]:
    """Names → concrete specs (bare distance names expanded over `distances`), validated against
    what the run holds; a predictor that needs speculative rankings the run lacks is one line that
    says how to record them."""
    if not names:
        raise InvalidParameterError(f"no predictors given; use some of {valid_names()}")
    n_layers = len(info.layers)
    specs: list[PredictorSpec] = []
    for raw in names:
        pred, param = get_predictor(raw)
        if pred.distance_param:
            ds = [param] if param else list(distances)
            for d in ds:
                _check_distance(pred, int(d), n_layers, info)
                specs.append(PredictorSpec(f"{pred.prefix}{d}", pred, int(d), int(d)))
        else:
            name = raw.strip().lower()
            specs.append(PredictorSpec(name, pred, param, None))
    seen: set[str] = set()
    unique = []
    for s in specs:
        if s.name not in seen:
            seen.add(s.name)
            unique.append(s)
    return unique


def _check_distance(pred: Predictor, d: int, n_layers: int, info: SourceInfo) -> None:
    if d < 1:
        raise InvalidParameterError(f"distance {d} for {pred.prefix}{d} must be at least 1")
    if pred.needs == "speculative":
        have = info.speculative_distances
        if not have:
            raise InvalidParameterError(
                f"predictor {pred.prefix}{d} needs speculative rankings, and run "
                f"{info.run_id or ''} has none; {RECORD_HINT}"
            )
        if d > have:
            raise InvalidParameterError(
                f"predictor {pred.prefix}{d}: run {info.run_id or ''} recorded speculative "
                f"rankings for distances 1..{have} only; ask for d <= {have}, or re-collect with "
                f"`routescope collect … --speculative {d}`"
            )
    elif d >= n_layers:
        raise InvalidParameterError(
            f"distance {d} for {pred.prefix}{d} must be below the run's {n_layers} MoE layers"
        )


# ---- the built-in predictors -----------------------------------------------------------------------
def _experts32(chunk: Trace) -> np.ndarray:
    return np.ascontiguousarray(chunk.experts, dtype=np.int32)


def _pad(arr: np.ndarray, width: int) -> np.ndarray:
    """int32[N, L, width]: the first `width` entries of arr's last axis, -1 beyond its end."""
    n, nl, w = arr.shape
    out = np.full((n, nl, width), -1, dtype=np.int32)
    out[:, :, : min(w, width)] = arr[:, :, : min(w, width)]
    return out


def _speculative(chunk: Trace, spec: PredictorSpec, width: int, fitted: Any) -> np.ndarray:
    if chunk.speculative is None:
        raise InvalidParameterError(
            f"predictor {spec.name} needs speculative rankings, and run {chunk.run_id or ''} has "
            f"none; {RECORD_HINT}"
        )
    d = int(spec.param)
    if d > chunk.speculative.shape[2]:
        raise InvalidParameterError(
            f"predictor {spec.name}: distances 1..{chunk.speculative.shape[2]} were recorded"
        )
    return _pad(chunk.speculative[:, :, d - 1, :], width)


def _window(chunk: Trace, spec: PredictorSpec, width: int, fitted: Any) -> np.ndarray:
    w = 1 if spec.predictor.name == "previous-token" else int(spec.param)
    return _window_predict(
        _experts32(chunk), np.asarray(chunk.seq_offsets, np.int64), w, width, chunk.num_experts
    )


def _transition(chunk: Trace, spec: PredictorSpec, width: int, fitted: Any) -> np.ndarray:
    if fitted is None:
        raise InvalidParameterError(
            f"predictor {spec.name} needs a fit; run it through prefetch_recall or offload_whatif"
        )
    d = int(spec.param)
    probs, marg = fitted.model(d)
    return _transition_predict(_experts32(chunk), d, probs, marg, width)


def _oracle(chunk: Trace, spec: PredictorSpec, width: int, fitted: Any) -> np.ndarray:
    return _pad(_experts32(chunk), width)


for _entry in (
    Predictor(
        "speculative-<d>",
        "layer l's router on the router input of layer l - d (recorded at collection)",
        "speculative",
        _speculative,
        distance_param=True,
        same_token=True,
    ),
    Predictor(
        "previous-token",
        "the experts token t - 1 used at layer l",
        "nothing",
        _window,
    ),
    Predictor(
        "window-<W>",
        "layer l's experts over tokens t - W .. t - 1, most requested first",
        "nothing",
        _window,
        example=8,
    ),
    Predictor(
        "transition-<d>",
        "layer l's experts ranked by P(e at l | the token's experts at l - d), fitted on train "
        "sequences",
        "fit",
        _transition,
        distance_param=True,
        same_token=True,
    ),
    Predictor("oracle", "the true experts (upper bound)", "truth", _oracle),
):
    register(_entry)


def predict(
    chunk: Trace, spec: PredictorSpec, width: int, fitted: TransitionFit | None = None
) -> np.ndarray:
    """int32[N, L, width]: the predictor's top-`width` experts per token row and MoE layer
    (rank order, -1 where it has fewer or none)."""
    return spec.predictor.predict(chunk, spec, int(width), fitted)


# ---- numba kernels ---------------------------------------------------------------------------------
@njit(cache=True)
def _window_predict(X, offsets, W, M, n_items):
    """Top-M experts per (token, layer) over the previous W tokens of the same sequence."""
    n, nl, k = X.shape
    out = np.full((n, nl, M), -1, dtype=np.int32)
    cnt = np.zeros(n_items, dtype=np.int64)
    lastu = np.zeros(n_items, dtype=np.int64)
    lastr = np.zeros(n_items, dtype=np.int64)
    cand = np.empty(max(1, W * k), dtype=np.int64)
    for s in range(len(offsets) - 1):
        a, b = offsets[s], offsets[s + 1]
        for lay in range(nl):
            for t in range(a, b):
                nc = 0
                for u in range(max(a, t - W), t):
                    for j in range(k):
                        e = X[u, lay, j]
                        if e < 0:
                            continue
                        if cnt[e] == 0:
                            cand[nc] = e
                            nc += 1
                        cnt[e] += 1
                        lastu[e] = u
                        lastr[e] = j
                for r in range(min(M, nc)):
                    bi = -1
                    for c in range(nc):
                        e = cand[c]
                        if e < 0:
                            continue
                        if bi < 0:
                            bi = c
                            continue
                        f = cand[bi]
                        if (
                            cnt[e] > cnt[f]
                            or (cnt[e] == cnt[f] and lastu[e] > lastu[f])
                            or (cnt[e] == cnt[f] and lastu[e] == lastu[f] and lastr[e] < lastr[f])
                        ):
                            bi = c
                    out[t, lay, r] = cand[bi]
                    cand[bi] = -1
                for u in range(max(a, t - W), t):
                    for j in range(k):
                        e = X[u, lay, j]
                        if e >= 0:
                            cnt[e] = 0
    return out


@njit(cache=True)
def _transition_counts(X, rows, d, pairs, cond, marg, with_marg):
    """Add train rows' counts: pairs[l, a, b] (a at l - d, b at l, same token), cond[l, a]
    (tokens with a at l - d) and, when with_marg, marg[l, b] (tokens with b at l)."""
    n, nl, k = X.shape
    for r in rows:
        if with_marg:
            for lay in range(nl):
                for j in range(k):
                    b = X[r, lay, j]
                    if b >= 0:
                        marg[lay, b] += 1
        for lay in range(d, nl):
            for ja in range(k):
                a = X[r, lay - d, ja]
                if a < 0:
                    continue
                cond[lay, a] += 1
                for jb in range(k):
                    b = X[r, lay, jb]
                    if b >= 0:
                        pairs[lay, a, b] += 1


@njit(cache=True)
def _transition_predict(X, d, probs, marg, M):
    """Top-M experts at each layer l >= d by the summed conditional probabilities of the token's
    experts at l - d (ties: train frequency at l, then the lower id). One pass over the E scores
    keeps the best M in order (insertion), so E = 256 costs a few hundred comparisons."""
    n, nl, k = X.shape
    n_items = probs.shape[2]
    width = min(M, n_items)
    out = np.full((n, nl, M), -1, dtype=np.int32)
    score = np.zeros(n_items, dtype=np.float64)
    for t in range(n):
        for lay in range(d, nl):
            have = False
            for b in range(n_items):
                score[b] = 0.0
            for ja in range(k):
                a = X[t, lay - d, ja]
                if a < 0:
                    continue
                have = True
                for b in range(n_items):
                    score[b] += probs[lay, a, b]
            if not have:
                continue
            filled = 0
            for b in range(n_items):  # ascending ids: an equal key never displaces a lower id
                pos = filled
                while pos > 0:
                    c = out[t, lay, pos - 1]
                    if score[b] > score[c] or (
                        score[b] == score[c] and marg[lay, b] > marg[lay, c]
                    ):
                        pos -= 1
                    else:
                        break
                if pos >= width:
                    continue
                last = min(filled, width - 1)
                for q in range(last, pos, -1):
                    out[t, lay, q] = out[t, lay, q - 1]
                out[t, lay, pos] = b
                if filled < width:
                    filled += 1
    return out


@njit(cache=True)
def _count_hits(X, P, phase, rows, widths, hits, pred, cov, tok):
    """Add, per (phase, layer), evaluated tokens, covered tokens (a prediction exists) and, per
    width m, hits |P_m ∩ S| and predicted experts |P_m| over the given token rows."""
    n, nl, k = X.shape
    M = P.shape[2]
    nw = len(widths)
    for r in rows:
        ph = phase[r]
        for lay in range(nl):
            tok[ph, lay] += 1
            if M == 0 or P[r, lay, 0] < 0:
                continue
            cov[ph, lay] += 1
            h = 0
            c = 0
            w = 0
            for j in range(M):
                e = P[r, lay, j]
                if e >= 0:
                    c += 1
                    for q in range(k):
                        if X[r, lay, q] == e:
                            h += 1
                            break
                while w < nw and widths[w] == j + 1:
                    hits[ph, lay, w] += h
                    pred[ph, lay, w] += c
                    w += 1
            while w < nw:
                hits[ph, lay, w] += h
                pred[ph, lay, w] += c
                w += 1


# ---- pass 1: fitting transition counts on the train split ------------------------------------------
@dataclass(frozen=True)
class TransitionFit:
    """Transition counts over the train sequences: pairs[i, l, a, b] for distance distances[i],
    cond[i, l, a], marg[l, b]; plus how many train sequences and token rows they came from."""

    distances: tuple[int, ...]
    train_split: float
    pairs: np.ndarray
    cond: np.ndarray
    marg: np.ndarray
    train_sequences: int
    train_tokens: int

    def model(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(probs float64[L, E, E] = P(b at l | a at l - d), marg int64[L, E]) for distance d."""
        i = self.distances.index(int(d))
        cond = self.cond[i].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            probs = np.where(
                cond[:, :, None] > 0, self.pairs[i] / np.maximum(cond, 1)[:, :, None], 0.0
            )
        return np.ascontiguousarray(probs), np.ascontiguousarray(self.marg)


def _fit_empty(distances: tuple[int, ...], n_layers: int, e: int) -> dict[str, np.ndarray]:
    nd = len(distances)
    return {
        "pairs": np.zeros((nd, n_layers, e, e), dtype=np.int64),
        "cond": np.zeros((nd, n_layers, e), dtype=np.int64),
        "marg": np.zeros((n_layers, e), dtype=np.int64),
        "sizes": np.zeros(2, dtype=np.int64),  # train sequences, train token rows
    }


def _fit_kernel(
    distances: tuple[int, ...], train_split: float, n_layers: int, e: int, chunk: Trace
) -> dict[str, np.ndarray]:
    out = _fit_empty(distances, n_layers, e)
    train = is_train(chunk.seq_ids, train_split)
    rows = np.flatnonzero(np.repeat(train, chunk.seq_lengths)).astype(np.int64)
    out["sizes"][:] = (int(train.sum()), len(rows))
    if len(rows) == 0:
        return out
    X = _experts32(chunk)
    for i, d in enumerate(distances):
        _transition_counts(X, rows, d, out["pairs"][i], out["cond"][i], out["marg"], i == 0)
    return out


def _fit_finalize(
    distances: tuple[int, ...], train_split: float, acc: dict[str, np.ndarray]
) -> TransitionFit:
    return TransitionFit(
        distances=distances,
        train_split=train_split,
        pairs=acc["pairs"],
        cond=acc["cond"],
        marg=acc["marg"],
        train_sequences=int(acc["sizes"][0]),
        train_tokens=int(acc["sizes"][1]),
    )


def transition_fit_reduction(
    info: SourceInfo, distances: Iterable[int], train_split: float = DEFAULT_TRAIN_SPLIT
) -> Reduction[dict[str, np.ndarray], TransitionFit]:
    """The fit of transition counts on the train split as a `Reduction` (all layers per chunk)."""
    ds = tuple(sorted({int(d) for d in distances}))
    n_layers = len(info.layers)
    for d in ds:
        if not 1 <= d < n_layers:
            raise InvalidParameterError(
                f"transition distance {d} must lie in 1..{n_layers - 1} (the run has {n_layers} "
                "MoE layers)"
            )
    split = check_train_split(train_split)
    return Reduction(
        kernel=partial(_fit_kernel, ds, split, n_layers, info.num_experts),
        merge=add_arrays,
        finalize=partial(_fit_finalize, ds, split),
        empty=partial(_fit_empty, ds, n_layers, info.num_experts),
        name="transition fit",
    )


def fit_transition(
    data: Trace | TraceSource,
    distances: Iterable[int] = (1,),
    train_split: float = DEFAULT_TRAIN_SPLIT,
    labels: Sequence[str] | None = None,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> TransitionFit:
    """Transition counts fitted on the train sequences of `data` only (held-out ones unread by
    the counts); one clear error when the split leaves no train sequence."""
    src = as_source(data)
    if labels:
        src = src.select(labels=list(labels))
    red = transition_fit_reduction(src.info, distances, train_split)
    fit = run_reduction(src, red, max_rows=max_rows, progress=progress, executor=executor)
    if fit.train_sequences == 0:
        raise InvalidParameterError(
            f"train split {train_split} puts none of the {src.info.num_sequences} sequences in "
            "the train set; raise --train-split or collect more sequences"
        )
    return fit


# ---- pass 2: recall and precision ------------------------------------------------------------------
@dataclass(frozen=True)
class PrefetchSpec:
    """What the evaluation kernel needs (picklable: it travels to Ray workers)."""

    specs: tuple[PredictorSpec, ...]
    widths: tuple[int, ...]
    n_layers: int
    heldout_only: tuple[bool, ...]
    train_split: float
    fitted: TransitionFit | None


def eval_rows(chunk: Trace, heldout_only: bool, train_split: float) -> np.ndarray:
    """int64 token rows to evaluate: all rows, or the held-out sequences' rows."""
    if not heldout_only:
        return np.arange(chunk.num_tokens, dtype=np.int64)
    held = ~is_train(chunk.seq_ids, train_split)
    return np.flatnonzero(np.repeat(held, chunk.seq_lengths)).astype(np.int64)


def _eval_empty(spec: PrefetchSpec) -> dict[str, np.ndarray]:
    nc, nl, nw = len(spec.specs), spec.n_layers, len(spec.widths)
    return {
        "hits": np.zeros((nc, 2, nl, nw), dtype=np.int64),
        "predicted": np.zeros((nc, 2, nl, nw), dtype=np.int64),
        "covered": np.zeros((nc, 2, nl), dtype=np.int64),
        "tokens": np.zeros((nc, 2, nl), dtype=np.int64),
    }


def _eval_kernel(spec: PrefetchSpec, chunk: Trace) -> dict[str, np.ndarray]:
    out = _eval_empty(spec)
    if chunk.num_tokens == 0:
        return out
    X = _experts32(chunk)
    phase = np.asarray(chunk.phase, dtype=np.int64)
    widths = np.asarray(spec.widths, dtype=np.int64)
    rows = {h: eval_rows(chunk, h, spec.train_split) for h in set(spec.heldout_only)}
    for i, ps in enumerate(spec.specs):
        r = rows[spec.heldout_only[i]]
        if len(r) == 0:
            continue
        P = predict(chunk, ps, max(spec.widths), spec.fitted)
        _count_hits(
            X,
            P,
            phase,
            r,
            widths,
            out["hits"][i],
            out["predicted"][i],
            out["covered"][i],
            out["tokens"][i],
        )
    return out


SCHEMA = {
    "phase": pl.Utf8,
    "predictor": pl.Utf8,
    "distance": pl.Int64,
    "width": pl.Int64,
    "layer": pl.Int64,
    "tokens": pl.Int64,
    "covered": pl.Int64,
    "hits": pl.Int64,
    "predicted": pl.Int64,
    "coverage": pl.Float64,
    "recall": pl.Float64,
    "precision": pl.Float64,
    "chance": pl.Float64,
    "evaluated_on": pl.Utf8,
}


def _eval_finalize(
    spec: PrefetchSpec, phase: str, layers: tuple[int, ...], k: int, e: int, acc: dict
) -> pl.DataFrame:
    if phase == "split":
        any_tok = acc["tokens"].sum(axis=(0, 2))
        phases = [(p, [i]) for i, p in enumerate(PHASES) if any_tok[i] > 0] or [("all", [0, 1])]
    elif phase == "all":
        phases = [("all", [0, 1])]
    else:
        i = PHASES.index(phase)
        if acc["tokens"][:, i].sum() == 0:
            raise InvalidParameterError(
                f"this selection has no {phase} tokens to evaluate; pick another phase"
            )
        phases = [(phase, [i])]
    rows: dict[str, list] = {name: [] for name in SCHEMA}
    layer_ids: list[int | None] = [*layers, None]
    for ph_name, idx in phases:
        for ci, ps in enumerate(spec.specs):
            tok = acc["tokens"][ci][idx].sum(axis=0)
            cov = acc["covered"][ci][idx].sum(axis=0)
            hits = acc["hits"][ci][idx].sum(axis=0)
            pred = acc["predicted"][ci][idx].sum(axis=0)
            tok = np.append(tok, tok.sum())
            cov = np.append(cov, cov.sum())
            hits = np.vstack([hits, hits.sum(axis=0, keepdims=True)])
            pred = np.vstack([pred, pred.sum(axis=0, keepdims=True)])
            for li, lay in enumerate(layer_ids):
                for wi, m in enumerate(spec.widths):
                    c = int(cov[li])
                    rows["phase"].append(ph_name)
                    rows["predictor"].append(ps.name)
                    rows["distance"].append(ps.distance)
                    rows["width"].append(int(m))
                    rows["layer"].append(lay)
                    rows["tokens"].append(int(tok[li]))
                    rows["covered"].append(c)
                    rows["hits"].append(int(hits[li, wi]))
                    rows["predicted"].append(int(pred[li, wi]))
                    rows["coverage"].append(c / int(tok[li]) if tok[li] else None)
                    rows["recall"].append(int(hits[li, wi]) / (k * c) if c else None)
                    rows["precision"].append(int(hits[li, wi]) / (m * c) if c else None)
                    rows["chance"].append(min(m, e) / e)
                    rows["evaluated_on"].append("held-out" if spec.heldout_only[ci] else "all")
    return pl.DataFrame(rows, schema=SCHEMA)


def check_widths(widths: Iterable[int] | None, info: SourceInfo) -> tuple[int, ...]:
    """Widths m in 1..E, sorted and unique (default: k and 2k)."""
    k, e = info.top_k, info.num_experts
    ws = sorted({int(w) for w in (widths if widths is not None else (k, 2 * k))})
    if not ws:
        raise InvalidParameterError("no widths given; pass at least one m >= 1 (e.g. k, 2k)")
    bad = [w for w in ws if w < 1 or w > e]
    if bad:
        raise InvalidParameterError(f"width {bad[0]} is outside 1..{e} (the experts per layer)")
    return tuple(min(w, e) for w in ws)


def default_distances(info: SourceInfo) -> tuple[int, ...]:
    """1..D when speculative rankings were recorded for D distances, else (1,)."""
    return tuple(range(1, max(1, info.speculative_distances) + 1))


def heldout_flags(specs: Sequence[PredictorSpec], evaluate: str) -> tuple[bool, ...]:
    """Per spec: evaluate on held-out sequences only? Fitted predictors always are; with
    'auto' every predictor is when one is fitted."""
    if evaluate not in EVALUATE:
        raise InvalidParameterError(
            f"unknown evaluate {evaluate!r}; use one of {', '.join(EVALUATE)}"
        )
    any_fit = any(s.fitted for s in specs)
    return tuple(
        s.fitted or evaluate == "heldout" or (evaluate == "auto" and any_fit) for s in specs
    )


def prefetch_reduction(
    info: SourceInfo,
    specs: Sequence[PredictorSpec],
    widths: Sequence[int],
    phase: str = "split",
    train_split: float = DEFAULT_TRAIN_SPLIT,
    evaluate: str = "auto",
    fitted: TransitionFit | None = None,
) -> Reduction[dict[str, np.ndarray], pl.DataFrame]:
    """Recall/precision of resolved predictor specs as a `Reduction` (all layers per chunk);
    `fitted` holds the pass-1 counts when a spec is fitted."""
    if phase not in PHASE_CHOICES:
        raise InvalidParameterError(
            f"unknown phase {phase!r}; use one of {', '.join(PHASE_CHOICES)}"
        )
    if any(s.fitted for s in specs) and fitted is None:
        raise InvalidParameterError("a fitted predictor needs its fit (run fit_transition first)")
    spec = PrefetchSpec(
        specs=tuple(specs),
        widths=tuple(int(w) for w in widths),
        n_layers=len(info.layers),
        heldout_only=heldout_flags(specs, evaluate),
        train_split=check_train_split(train_split),
        fitted=fitted,
    )
    return Reduction(
        kernel=partial(_eval_kernel, spec),
        merge=add_arrays,
        finalize=partial(
            _eval_finalize, spec, phase, tuple(info.layers), info.top_k, info.num_experts
        ),
        empty=partial(_eval_empty, spec),
        speculative=needs_speculative(specs),
        name="prefetch recall",
    )


def pass_progress(progress: Progress | None, index: int, passes: int) -> Progress | None:
    """`progress` for pass `index` of `passes`: one bar that fills once over all passes."""
    if progress is None or passes == 1:
        return progress

    def update(done: int, total: int) -> None:
        progress(index * total + done, passes * total)

    return update


def fit_if_needed(
    src: TraceSource,
    specs: Sequence[PredictorSpec],
    train_split: float,
    *,
    max_rows: int,
    progress: Progress | None,
    executor: Executor | None,
) -> TransitionFit | None:
    """Pass 1 when a spec is fitted (on train sequences only), else None."""
    ds = sorted({int(s.distance) for s in specs if s.fitted and s.distance is not None})
    if not ds:
        return None
    return fit_transition(
        src, ds, train_split, max_rows=max_rows, progress=progress, executor=executor
    )


def prefetch_recall(
    data: Trace | TraceSource,
    predictors: Sequence[str] | None = None,
    distances: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    train_split: float = DEFAULT_TRAIN_SPLIT,
    evaluate: str = "auto",
    phase: str = "split",
    labels: Sequence[str] | None = None,
    *,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """recall@m and precision@m of each predictor, per layer (and pooled: layer null), per
    distance d and width m, prefill and decode apart (`phase="split"`), long form.

    `predictors`: registry names (default: `default_predictors`); bare `speculative` and
    `transition` run at every distance in `distances` (default 1..D recorded, or 1). `widths`:
    m values (default k, 2k). `train_split`: the fraction of sequences (by id hash) the
    transition counts are fitted on; `evaluate`: 'auto' (held-out sequences for every predictor
    when one is fitted, else all), 'heldout', or 'all' (fitted predictors stay held-out).
    """
    src = as_source(data)
    if labels:
        src = src.select(labels=list(labels))
    info = src.info
    names = list(predictors) if predictors is not None else list(default_predictors(info))
    ds = list(distances) if distances is not None else list(default_distances(info))
    specs = resolve_predictors(names, ds, info)
    ws = check_widths(widths, info)
    passes = 2 if any(s.fitted for s in specs) else 1
    fitted = fit_if_needed(
        src,
        specs,
        train_split,
        max_rows=max_rows,
        progress=pass_progress(progress, 0, passes),
        executor=executor,
    )
    red = prefetch_reduction(info, specs, ws, phase, train_split, evaluate, fitted)
    return run_reduction(
        src,
        red,
        max_rows=max_rows,
        progress=pass_progress(progress, passes - 1, passes),
        executor=executor,
    )
