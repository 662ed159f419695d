"""What the analysis commands share: --ray/--address and the executor they give, progress bars
of route rows that appear only when something is computed, the run as a source, and a session
(`analysis_session`) that opens the store, resolves the run and computes through the results memo,
then writes the --plot figure and the --json output.

A command over one run is::

    with analysis_session(db, run, use_ray=use_ray, address=address, quiet=quiet or as_json) as s:
        df = s.memo(ca.cache_hit_rates, "cache policies", **params)
    s.output(df, params, as_json=as_json, plot=plot, figure="figures_locality:cache_figure",
             title=f"Expert-cache hit rate — run {s.run_id}", table=lambda: print_cache(df))
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from routescope.cli._format import json_rows
from routescope.core.errors import InvalidParameterError

if TYPE_CHECKING:
    from rich.console import Console

    from routescope.analysis.streaming import Executor
    from routescope.core.source import TraceSource
    from routescope.store.store import RoutingStore

RAY_HELP = "Run the analysis as Ray tasks (a local Ray unless --address)."
ADDRESS_HELP = "With --ray: address of a running Ray cluster ('auto', 'ray://host:10001')."


class LazyBar:
    """A `progress(done, total)` callback that opens a rich progress bar on its first call, so a
    result served from the store's memo shows none. Use as a context manager."""

    def __init__(self, console: Any, what: str) -> None:
        self.console, self.what = console, what
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.console.quiet:
            return
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._bar = Progress(
                TextColumn(self.what),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@contextmanager
def analysis_executor(use_ray: bool, address: str | None, quiet: bool) -> Iterator[Any]:
    """None (this process), or a `RayExecutor` on a Ray session kept open for the whole command
    (several reductions share one cluster; a local one is started and stopped here)."""
    if not use_ray:
        if address is not None:
            raise InvalidParameterError("--address is for --ray; add --ray or leave it out")
        yield None
        return
    from routescope.analysis.ray_driver import RayError, RayExecutor

    try:
        import ray
    except ImportError:
        raise RayError(
            "--ray needs the ray package: pip install 'routescope[ray]' (or pip install ray)"
        ) from None
    started = False
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=not quiet,
            logging_level=logging.ERROR if quiet else logging.WARNING,
        )
        started = True
    try:
        yield RayExecutor(address, quiet=quiet)
    finally:
        if started:
            ray.shutdown()


def run_fingerprint(store: RoutingStore, run_id: str, source: TraceSource) -> list[Any]:
    """What identifies a run's contents for a memo entry kept under another run (whose writes
    alone clear it): id, creation time, sequences and tokens read."""
    created = store.run_info(run_id).get("created_at")
    return [run_id, str(created), source.info.num_sequences, source.info.num_tokens]


def source_loader(
    store: RoutingStore, run_id: str, phase: str, labels: list[str] | None
) -> Callable[[], TraceSource]:
    """The run as a `TraceSource`, made only when a result is not in the memo."""

    def source() -> TraceSource:
        return store.source(run_id, phase=phase, labels=labels)

    return source


class RowProgress:
    """Several analysis passes of one command, each a `LazyBar` (none when `enabled` is false)."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, quiet=not enabled)
        self._bars: list[LazyBar] = []

    def __enter__(self) -> RowProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        for bar in self._bars:
            bar.__exit__()

    def task(self, what: str) -> LazyBar:
        """A `progress(done, total)` callback for one pass; its bar appears at the first call."""
        bar = LazyBar(self.console, what)
        self._bars.append(bar)
        return bar


@dataclass
class AnalysisSession:
    """One analysis command's store, resolved run, executor and progress bars (see
    `analysis_session`); `err` prints status lines to stderr (silent when quiet)."""

    store: RoutingStore
    run_id: str
    executor: Executor | None
    bars: RowProgress

    @property
    def err(self) -> Console:
        return self.bars.console

    def memo(self, fn: Callable[..., Any], what: str, *, read: str = "all", **params: Any) -> Any:
        """`fn(source, **params)` from the store's memo when computed before (keyed by fn and
        `params`), else streamed over the run with a progress bar titled `what`. The source is
        the run's `read` phase ('all': the analysis splits phases itself) and `params["labels"]`."""
        source = source_loader(self.store, self.run_id, read, params.get("labels"))
        return self.store.memo_analysis(
            self.run_id,
            fn,
            source,
            progress=self.bars.task(what),
            executor=self.executor,
            **params,
        )

    def plot(self, figure: Callable[[], Any], path: Path) -> None:
        """Write `figure()` (a plotly figure) to `path` (.html, or .png) and say so."""
        from routescope.analysis.figures_locality import write_figure

        write_figure(figure(), path)
        self.err.print(f"wrote {path}")

    def output(
        self,
        rows: Any,
        params: dict[str, Any],
        *,
        as_json: bool,
        plot: Path | None,
        figure: str,
        title: str,
        table: Callable[[], None],
        extra: dict[str, Any] | None = None,
    ) -> None:
        """What a one-frame analysis command prints: --plot writes `figure` ('module:function'
        of `routescope.analysis`, called as function(rows, title=title), imported only then);
        then --json prints {run_id, **params, **extra, rows}, else `table()` prints tables."""
        if plot is not None:
            module, _, name = figure.partition(":")

            def make() -> Any:
                fn = getattr(importlib.import_module(f"routescope.analysis.{module}"), name)
                return fn(rows, title=title)

            self.plot(make, plot)
        if as_json:
            echo_json({"run_id": self.run_id, **params, **(extra or {}), "rows": json_rows(rows)})
        else:
            table()


@contextmanager
def analysis_session(
    db: str, run: str, *, use_ray: bool, address: str | None, quiet: bool
) -> Iterator[AnalysisSession]:
    """The store (read-only) with `run` resolved, the executor of --ray/--address and progress
    bars (none when `quiet`), kept open for the `with` block."""
    from routescope.store import RoutingStore

    with (
        RoutingStore(db, read_only=True) as store,
        analysis_executor(use_ray, address, quiet) as executor,
        RowProgress(not quiet) as bars,
    ):
        yield AnalysisSession(store, store.resolve_run(run), executor, bars)


def echo_json(out: dict[str, Any]) -> None:
    """The --json output: one indented JSON document on stdout."""
    import typer

    typer.echo(json.dumps(out, indent=2))
