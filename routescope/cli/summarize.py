"""`routescope summarize`: compute what the dashboard's pages show by default into the store's
memo of analysis results, where the run is made, so the pages open without computing anything.

What each page shows by default, and the memo key of each result, is defined once in
`routescope.analysis.summary` (the pages build their results with the same functions). Run at
the end of `routescope collect` and `routescope import` (their `--summarize/--no-summarize`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from routescope.cli._analysis import (
    ADDRESS_HELP,
    RAY_HELP,
    RowProgress,
    analysis_executor,
)
from routescope.cli._app import DEFAULT_DB, app

if TYPE_CHECKING:
    from rich.console import Console

    from routescope.analysis.streaming import Executor
    from routescope.analysis.summary import PageResult
    from routescope.core.source import TraceSource
    from routescope.store.store import RoutingStore

#: What computing the pages' defaults costs, for the help of summarize and the --summarize flags.
COST_HELP = (
    "Seconds on a small run; on a 1M-token OLMoE-shaped run (16 layers, top-8 of 64) about "
    "5 minutes on 2 cores, most of it the cache simulation of every policy at every capacity "
    "and the prefetch predictors; peak memory under 2 GiB."
)
SUMMARIZE_HELP = (
    "Then compute what the dashboard pages show by default into the store "
    "(`routescope summarize`), so they open at once. " + COST_HELP
)


@dataclass(frozen=True)
class Summarized:
    """One result of `summarize_run`: where it came from and how long it took."""

    page: str
    name: str
    seconds: float
    computed: bool  #: False: it was in the memo already
    skipped: str = ""  #: why it could not be computed for this run ('' when it was)


@app.command("summarize")
def summarize_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to read and keep the results in."),
    pages: str = typer.Option(
        "experts,locality,prefetch,localization",
        help="Comma list of the dashboard pages to summarize.",
    ),
    use_ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status messages."),
) -> None:
    """Compute the analyses the dashboard's Experts, Locality, Prefetch and Localization pages
    show by default and keep them in the store's memo (the CLI's analyze commands share them):
    a page then opens without computing. Results already in the memo are not computed again."""
    from routescope.analysis.summary import check_pages

    asked = check_pages([p.strip() for p in pages.split(",") if p.strip()])
    summarize_run(db, run, asked, quiet=quiet, use_ray=use_ray, address=address)


def summarize_run(
    db: str,
    run: str,
    pages: list[str] | None = None,
    *,
    quiet: bool = False,
    use_ray: bool = False,
    address: str | None = None,
    after: str | None = None,
) -> list[Summarized]:
    """Compute `pages`' default results (all pages with results when None) of `run` into the
    store's memo, with a progress bar per result and a line each. `after` names the command
    this follows (collect, import): a run nothing can be summarized for (a load-only import) is
    then a note, not an error."""
    from pathlib import Path

    from routescope.analysis.summary import PAGES
    from routescope.core.errors import InvalidParameterError, StoreError
    from routescope.store.store import RoutingStore

    if Path(db).is_dir():
        raise StoreError(
            f"{db} is a Parquet export, which keeps no results; summarize the DuckDB file"
        )
    with (
        RoutingStore(db, read_only=True) as store,
        analysis_executor(use_ray, address, quiet) as executor,
        RowProgress(not quiet) as bars,
    ):
        run_id = store.resolve_run(run)
        try:
            items = _page_results(store, run_id, list(pages or PAGES))
        except InvalidParameterError as exc:
            if after is None:
                raise
            bars.console.print(f"not summarized: {exc}", highlight=False, soft_wrap=True)
            return []
        if not quiet:
            bars.console.print(
                f"summarizing run {run_id} for the dashboard ({len(items)} results)",
                highlight=False,
            )
        shared: dict[str, Any] = {}  # the Experts page's counts, made once for its results
        return [_one(store, run_id, item, bars, executor, shared) for item in items]


def _page_results(store: RoutingStore, run_id: str, pages: list[str]) -> list[PageResult]:
    """The default results of `pages` for this run (its shape, labels, target spans, cost)."""
    from functools import partial

    from routescope.analysis.summary import default_cost, page_defaults
    from routescope.models.costs import run_cost

    info = store.source(run_id).info
    cost = None
    if "prefetch" in pages:
        cost = default_cost(partial(run_cost, store.run_info(run_id)))[0]
    has_target = False
    if "localization" in pages:
        row = store.con.execute(
            "SELECT coalesce(bool_or(in_target), false) FROM tokens WHERE run_id = ?", [run_id]
        ).fetchall()
        has_target = bool(row[0][0])
    return page_defaults(info, pages, cost=cost, has_target=has_target)


def _one(
    store: RoutingStore,
    run_id: str,
    item: PageResult,
    bars: RowProgress,
    executor: Executor | None,
    shared: dict[str, Any],
) -> Summarized:
    """One result into the memo (a RoutescopeError for this run is reported and skipped)."""
    from routescope.analysis.summary import memo
    from routescope.core.errors import RoutescopeError

    title = f"{item.page} {item.name}"
    watched = _Watching(store)
    t0 = time.perf_counter()
    try:
        with bars.task(f"{title}: {item.what}") as bar:
            memo(watched, run_id, item, progress=bar, shared=shared, executor=executor)
    except RoutescopeError as exc:
        _say(bars.console, f"  {title}: skipped ({str(exc).splitlines()[0]})")
        return Summarized(item.page, item.name, time.perf_counter() - t0, False, str(exc))
    seconds = time.perf_counter() - t0
    computed = watched.computed
    _say(bars.console, f"  {title}: " + (f"{seconds:.1f} s" if computed else "in the memo"))
    return Summarized(item.page, item.name, seconds, computed)


class _Watching:
    """The store, noting whether a result was computed (the memo lacked it) rather than read."""

    def __init__(self, store: RoutingStore) -> None:
        self.store, self.computed = store, False

    def source(self, run: str | None = None, phase: str = "all") -> TraceSource:
        return self.store.source(run, phase=phase)

    def memo_result(
        self, run_id: str, kind: str, params: Mapping[str, Any], compute: Callable[[], Any]
    ) -> Any:
        def noted() -> Any:
            self.computed = True
            return compute()

        return self.store.memo_result(run_id, kind, params, noted)


def _say(console: Console, line: str) -> None:
    console.print(line, highlight=False, soft_wrap=True)
