"""What each dashboard page shows by default, defined once: the analyses, their arguments, and the
keys under which the store's memo of results holds them (DESIGN §7).

A large run's analyses take minutes (cache simulation of every policy at every capacity, SRP with
its shuffled baseline, prefetch recall, the offloading what-if), so they are computed where the
run is made: `routescope summarize` (run at the end of `routescope collect` and `routescope
import`) computes `page_defaults(...)` into the memo, and each dashboard page builds its results
with the same functions below from its widgets' values, so with the widgets left at their
defaults a page asks the memo for exactly the keys summarize filled, and computes nothing.

A `PageResult` is one analysis call: `fn(data, **kwargs)` where data is the run read with
`read_phase` (or the result of a pass shared by several results, `shared`), kept in the memo
under `key()`: fn's qualified name and full arguments (`RoutingStore.memo_analysis`, as the CLI's
analyze commands key them), or, for `localize`, the parameters `routescope localize` keys it by.
`memo(store, run_id, result, ...)` answers one from the memo (`RoutingStore.memo_result` under
`key()`, the key `memo_analysis` gives), computing it only when missing.

Pure definitions and a driver over a store it is given: nothing here opens a database or a model
(the offloading cost, which needs the model's config, is passed in; `default_cost`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from routescope.core.costs import OffloadCost
from routescope.core.errors import InvalidParameterError, RoutescopeError
from routescope.core.source import DEFAULT_CHUNK_ROWS, SourceInfo, TraceSource

if TYPE_CHECKING:
    import polars as pl

    from routescope.analysis.streaming import Executor, Progress

#: The pages with analysis results, in the dashboard's order (keys of app/pages.py).
PAGES: tuple[str, ...] = ("experts", "locality", "prefetch", "localization")

#: Locality: segment lengths L of SRP and SCH (`routescope analyze consistency`'s default).
SEGMENT_LENGTHS: tuple[int, ...] = (4, 16, 64, 256)
#: Locality: the segment lengths the page offers.
SEGMENT_CHOICES: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Experts: minimum occurrences of a token id in the top-tokens table.
MIN_COUNT = 2
#: Localization: resamples of the prompt bootstrap and the permutation test.
N_BOOT = N_PERM = 200
#: Localization: the phase and seed the page localizes with (`routescope localize`'s defaults).
LOCALIZE_PHASE, LOCALIZE_SEED = "all", 0
#: Prefetch: the cost the page and summarize use for a run whose model config is not on this
#: machine (OLMoE-1B-7B's expert in bf16, 12.58 MB; 0.134 ms per MoE layer).
STANDIN_COST: Mapping[str, float] = {"expert_mb": 12.58, "layer_ms": 0.134}


class MemoStore(Protocol):
    """What `memo` needs of a store (`RoutingStore`)."""

    def source(self, run: str | None = None, phase: str = "all") -> TraceSource: ...

    def memo_result(
        self,
        run_id: str,
        kind: str,
        params: Mapping[str, Any],
        compute: Callable[[], pl.DataFrame],
    ) -> pl.DataFrame: ...


#: A pass several results share: (source, progress, max_rows, executor) → data for their fn.
Prepare = Callable[[TraceSource, "Progress | None", int, "Executor | None"], Any]


@dataclass(frozen=True)
class PageResult:
    """One result a page shows: `fn(data, **kwargs)`, through the store's memo."""

    page: str  #: the dashboard page (a key of app/pages.py)
    name: str  #: short name within the page ("srp", "cache", …)
    what: str  #: progress title while it computes
    fn: Callable[..., pl.DataFrame]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: the run read with this phase ('all': the analysis splits phases itself)
    read_phase: str = "all"
    #: how the data narrows the run beyond fn's arguments (part of the key)
    selection: Mapping[str, Any] | None = None
    #: results of one shared pass (e.g. the Experts page's counts): its name and how to make it
    shared: str | None = None
    prepare: Prepare | None = None
    #: a memo_result kind keyed by kwargs as given (`localize`); None: fn's name and arguments
    kind: str | None = None

    def key(self) -> tuple[str, dict[str, Any]]:
        """(kind, params) under which the store's memo holds this result."""
        from routescope.store.results import analysis_params, memo_kind

        if self.kind is not None:
            return self.kind, dict(self.kwargs)
        params = analysis_params(self.fn, self.kwargs)
        if self.selection:
            params["_selection"] = dict(self.selection)
        return memo_kind(self.fn), params


def memo(
    store: MemoStore,
    run_id: str,
    result: PageResult,
    *,
    progress: Progress | None = None,
    shared: MutableMapping[str, Any] | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """`result` from the store's memo, computed (streaming the run in chunks of `max_rows` route
    rows, with `progress`) only when missing. `shared` keeps shared passes between calls."""

    def source() -> TraceSource:
        return store.source(run_id, phase=result.read_phase)

    data: Callable[[], Any] = source
    if result.prepare is not None:
        prepare, name = result.prepare, result.shared or result.name
        cache = shared if shared is not None else {}

        def data() -> Any:
            if name not in cache:
                cache[name] = prepare(source(), progress, max_rows, executor)
            return cache[name]

    def compute() -> pl.DataFrame:
        run = {"progress": progress, "max_rows": max_rows, "executor": executor}
        return result.fn(data(), **run, **dict(result.kwargs))

    kind, params = result.key()
    return store.memo_result(run_id, kind, params, compute)


# ---- Experts ------------------------------------------------------------------------------------
def default_layer(layers: Sequence[int]) -> int:
    """The layer a page shows first: the middle MoE layer."""
    return int(layers[len(layers) // 2])


def _domain_counts(
    source: TraceSource,
    progress: Progress | None,
    max_rows: int,
    executor: Executor | None,
    *,
    group: str | None,
) -> Any:
    from routescope.analysis.specialization import domain_counts

    return domain_counts(source, group, progress=progress, max_rows=max_rows, executor=executor)


def experts_counts(info: SourceInfo, phase: str = "all") -> dict[str, PageResult]:
    """Load, its entropy, label × expert specialization and its CV: one streamed pass of counts
    (keyed as `routescope analyze specialization` keys them)."""
    from routescope.analysis import specialization as sp

    group = "label" if info.labels else None
    whole = {"phase": phase, "layers": None}
    common: dict[str, Any] = {
        "page": "experts",
        "what": "Counting expert load",
        "read_phase": phase,
        "selection": whole,
        "shared": f"domain_counts:{phase}:{group}",
        "prepare": partial(_domain_counts, group=group),
    }
    out = {
        "load": PageResult(name="load", fn=sp.expert_load, **common),
        "summary": PageResult(name="summary", fn=sp.load_summary, **common),
    }
    if info.labels:
        out["domain"] = PageResult(
            name="domain", fn=sp.domain_specialization, kwargs={"by": "label"}, **common
        )
    if len(info.labels) >= 2:
        out["cv"] = PageResult(name="cv", fn=sp.domain_cv, kwargs={"by": "label"}, **common)
    return out


def experts_vocabulary(layer: int, phase: str = "all", min_count: int = MIN_COUNT) -> PageResult:
    """The token ids each expert of `layer` dominates (the top-tokens table)."""
    from routescope.analysis import specialization as sp

    return PageResult(
        page="experts",
        name="vocabulary",
        what=f"Counting token ids at layer {layer}",
        fn=sp.vocabulary_specialization,
        kwargs={"min_count": int(min_count), "layers": [int(layer)]},
        read_phase=phase,
        selection={"phase": phase, "layers": None},
    )


def experts_coactivation(layer: int, phase: str = "all") -> PageResult:
    """Co-activation of `layer`'s experts."""
    from routescope.analysis import specialization as sp

    return PageResult(
        page="experts",
        name="coactivation",
        what=f"Co-activation at layer {layer}",
        fn=sp.coactivation,
        kwargs={"layer": int(layer)},
        read_phase=phase,
        selection={"phase": phase, "layers": None},
    )


def experts_page(info: SourceInfo) -> list[PageResult]:
    """Everything the Experts page shows with its default choices."""
    layer = default_layer(info.layers)
    return [
        *experts_counts(info).values(),
        experts_vocabulary(layer),
        experts_coactivation(layer),
    ]


# ---- Locality and caching -----------------------------------------------------------------------
def locality_consistency(
    segment_lengths: Sequence[int] = SEGMENT_LENGTHS,
    phase: str = "all",
    sch_kind: str = "segment-oracle",
) -> dict[str, PageResult]:
    """SRP (with its shuffled baseline), SCH and the repetition rates, keyed as `routescope analyze
    consistency` keys them."""
    from routescope.analysis import consistency as cons

    segs = sorted(int(x) for x in segment_lengths)
    common: dict[str, Any] = {"page": "locality", "read_phase": phase}
    return {
        "srp": PageResult(
            name="srp",
            what="SRP",
            fn=cons.srp,
            kwargs={"segment_lengths": segs, "phase": phase},
            **common,
        ),
        "sch": PageResult(
            name="sch",
            what="SCH",
            fn=cons.sch,
            kwargs={"segment_lengths": segs, "kind": sch_kind, "phase": phase},
            **common,
        ),
        "repetition": PageResult(
            name="repetition",
            what="Repetition",
            fn=cons.repetition_rates,
            kwargs={"phase": phase},
            **common,
        ),
    }


def cache_policies_shown(policies: Sequence[str] | None, service: str) -> list[str]:
    """The policies the page simulates: those chosen (default: the policy table's defaults) that
    are defined under `service`, and belady (the bound is always drawn)."""
    from routescope.analysis import policies as cp

    chosen = list(cp.default_policies()) if policies is None else list(policies)
    out = [p for p in chosen if cp.get_policy(p)[0].allows(service)]
    return out if "belady" in out else [*out, "belady"]


def locality_cache(
    policies: Sequence[str] | None = None, service: str = "stream", start: str = "cold"
) -> PageResult:
    """Hit rate against capacity per policy (every phase read: the analysis splits prefill and
    decode), keyed as `routescope analyze cache` keys it."""
    from routescope.analysis import cache

    return PageResult(
        page="locality",
        name="cache",
        what="Simulating expert caches",
        fn=cache.cache_hit_rates,
        kwargs={
            "policies": cache_policies_shown(policies, service),
            "service": service,
            "start": start,
        },
    )


def locality_page(info: SourceInfo | None = None) -> list[PageResult]:
    """Everything the Locality and caching page shows with its default choices."""
    return [*locality_consistency().values(), locality_cache()]


# ---- Prefetch and offloading --------------------------------------------------------------------
def recall_widths(info: SourceInfo) -> list[int]:
    """The widths m the page shows by default: k and 2k."""
    return [info.top_k, 2 * info.top_k]


def prefetch_recall(
    info: SourceInfo,
    predictors: Sequence[str] | None = None,
    widths: Sequence[int] | None = None,
    train_split: float | None = None,
) -> PageResult:
    """recall@m of the predictors (default: `default_predictors(info)`), keyed as `routescope
    analyze prefetch` keys it (a default choice is keyed as the CLI's omitted option, None)."""
    from routescope.analysis import prefetch as pf

    defaults = list(pf.default_predictors(info))
    names = None if predictors is None or list(predictors) == defaults else list(predictors)
    ws = None if widths is None else sorted(int(w) for w in widths)
    return PageResult(
        page="prefetch",
        name="recall",
        what="Evaluating predictors",
        fn=pf.prefetch_recall,
        kwargs={
            "predictors": names,
            "distances": None,
            "widths": None if ws == recall_widths(info) else ws,
            "train_split": float(pf.DEFAULT_TRAIN_SPLIT if train_split is None else train_split),
            "evaluate": "auto",
            "phase": "split",
            "labels": None,
        },
    )


def offload_predictors(info: SourceInfo) -> list[str]:
    """The predictors the what-if prefetches with by default (`simulate offload`'s default at
    lead 1): previous-token, speculative-1 when recorded, oracle."""
    return ["previous-token", *(["speculative-1"] if info.speculative_distances else []), "oracle"]


def default_cost(cost_of: Callable[..., OffloadCost]) -> tuple[OffloadCost, str]:
    """(the what-if's default cost, why it uses stand-ins or ''): `cost_of()` (the run's model
    config; e.g. `partial(routescope.models.costs.run_cost, run_info)`), or, when the config is
    not on this machine, `cost_of(**STANDIN_COST)`."""
    try:
        return cost_of(), ""
    except RoutescopeError as exc:
        return cost_of(**STANDIN_COST), str(exc)


def offload_whatif(
    info: SourceInfo,
    cost: OffloadCost,
    policies: Sequence[str] | None = None,
    predictors: Sequence[str] | None = None,
    lead: int = 1,
    start: str = "cold",
) -> PageResult:
    """Tokens/s against GPU memory per policy × predictor, keyed as `routescope simulate offload`
    keys it (at lead 1 the default predictors are keyed as the CLI's omitted option, None)."""
    from routescope.analysis import offload as ol
    from routescope.analysis import prefetch as pf

    names: list[str] | None = None if predictors is None else list(predictors)
    if lead == 1 and names == offload_predictors(info):
        names = None
    if names is None and lead != 1:
        names = offload_predictors(info)
    return PageResult(
        page="prefetch",
        name="whatif",
        what="Simulating offloading",
        fn=ol.offload_whatif,
        kwargs={
            "cost": cost,
            "policies": list(ol.DEFAULT_POLICIES if policies is None else policies),
            "predictors": names,
            "widths": None,
            "lead": int(lead),
            "capacities": None,
            "phase": "split",
            "train_split": pf.DEFAULT_TRAIN_SPLIT,
            "start": start,
            "labels": None,
        },
    )


def prefetch_page(info: SourceInfo, cost: OffloadCost) -> list[PageResult]:
    """Everything the Prefetch and offloading page shows with its default choices (`cost`: the
    run's `default_cost`)."""
    return [prefetch_recall(info), offload_whatif(info, cost)]


# ---- Localization -------------------------------------------------------------------------------
def localization_targets(info: SourceInfo, has_target: bool) -> list[str]:
    """The target sets a run offers: its labels, its prompt sets, and its target spans."""
    out = [f"label:{x}" for x in info.labels] + [f"set:{x}" for x in info.prompt_sets]
    return [*out, "target"] if has_target else out


def _localize(
    source: TraceSource,
    *,
    target: str,
    control: str,
    phase: str,
    n_boot: int,
    n_perm: int,
    weight: bool,
    seed: int,
    progress: Progress | None = None,
    max_rows: int = DEFAULT_CHUNK_ROWS,
    executor: Executor | None = None,
) -> pl.DataFrame:
    """`routescope localize`'s computation over the run (read with `phase`)."""
    from routescope.analysis import localization as lo

    t_set, c_set = lo.token_sets_from_specs(source, target, control)
    return lo.localize(
        t_set,
        c_set,
        n_boot=n_boot,
        n_perm=n_perm,
        seed=seed,
        weight=weight,
        progress=progress,
        max_rows=max_rows,
        executor=executor,
    )


def localization(
    target: str,
    control: str = "rest",
    n_boot: int = N_BOOT,
    n_perm: int = N_PERM,
    weight: bool = False,
) -> PageResult:
    """The ranking of target vs control, keyed as `routescope localize` keys it."""
    return PageResult(
        page="localization",
        name="ranking",
        what="Localizing (reading, then resampling)",
        fn=_localize,
        kind="localize",
        read_phase=LOCALIZE_PHASE,
        kwargs={
            "target": target,
            "control": control,
            "phase": LOCALIZE_PHASE,
            "n_boot": int(n_boot),
            "n_perm": int(n_perm),
            "weight": bool(weight),
            "seed": LOCALIZE_SEED,
        },
    )


def localization_page(info: SourceInfo, has_target: bool) -> list[PageResult]:
    """The Localization page's default: its first target set against the rest (nothing when the
    run offers no target set)."""
    targets = localization_targets(info, has_target)
    return [localization(targets[0])] if targets else []


# ---- every page ---------------------------------------------------------------------------------
def check_pages(pages: Sequence[str]) -> list[str]:
    """The page keys asked for, each a page with analysis results (one clear error otherwise)."""
    bad = [p for p in pages if p not in PAGES]
    if bad or not pages:
        raise InvalidParameterError(
            f"pages {', '.join(bad) or '(none)'}: choose among {', '.join(PAGES)}"
        )
    return list(dict.fromkeys(pages))


def page_defaults(
    info: SourceInfo,
    pages: Sequence[str] = PAGES,
    *,
    cost: OffloadCost | None = None,
    has_target: bool = False,
) -> list[PageResult]:
    """The results `pages` show with their default choices, in page order (the Prefetch page's
    what-if needs `cost`, the run's `default_cost`; Localization, whether target spans exist)."""
    out: list[PageResult] = []
    for page in check_pages(pages):
        if page == "experts":
            out += experts_page(info)
        elif page == "locality":
            out += locality_page(info)
        elif page == "prefetch":
            if cost is None:
                raise InvalidParameterError("the Prefetch page's what-if needs the run's cost")
            out += prefetch_page(info, cost)
        else:
            out += localization_page(info, has_target)
    return out
