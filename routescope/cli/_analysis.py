"""What the analysis commands share: --ray/--address and the executor they give, progress bars
of route rows that appear only when something is computed, and the run as a source."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from routescope.core.errors import InvalidParameterError

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


def run_fingerprint(store: Any, run_id: str, source: Any) -> list[Any]:
    """What identifies a run's contents for a memo entry kept under another run (whose writes
    alone clear it): id, creation time, sequences and tokens read."""
    created = store.run_info(run_id).get("created_at")
    return [run_id, str(created), source.info.num_sequences, source.info.num_tokens]


def source_loader(
    store: Any, run_id: str, phase: str, labels: list[str] | None
) -> Callable[[], Any]:
    """The run as a `TraceSource`, made only when a result is not in the memo."""

    def source() -> Any:
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
