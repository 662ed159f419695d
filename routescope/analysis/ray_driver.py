"""Analyses past one machine: the same kernels as Ray tasks over (layer group, sequence range) units.

`RayExecutor` is an `Executor` (`routescope.analysis.streaming`): the driver plans units over the
source (`plan_units`), each Ray task reopens the source where it runs (a source pickles as the path
of its DuckDB file or Parquet dataset, so every worker must see that path on a shared filesystem;
DuckDB reads the files, so an object-store URL would need its httpfs extension: not tested), runs the kernel over its unit in bounded chunks and returns
the unit's partial; the driver merges partials in unit order and finalizes. Partials are exact
aggregates, so the result equals the one-process result bit for bit.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from routescope.analysis.streaming import Progress, Reduction, Unit, map_unit, merge_all, plan_units
from routescope.core.errors import RoutescopeError
from routescope.core.source import TraceSource

R = TypeVar("R")


class RayError(RoutescopeError):
    """Ray is missing, or a Ray task failed."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayError(
            "--ray needs the ray package: pip install 'routescope[ray]' (or pip install ray)"
        ) from None
    return ray


def _map_unit_task(
    source: TraceSource, reduction: Reduction[Any, Any], unit: Unit, max_rows: int
) -> Any:
    """What one Ray task runs: the unit's partial (the source was reopened when unpickled)."""
    return map_unit(source, reduction, unit, max_rows=max_rows)


class RayExecutor:
    """Run reductions as Ray tasks: `address` of a running cluster ('auto', 'ray://host:10001'),
    or None to start a local one (`num_cpus` workers); `units_per_cpu` splits each layer group's
    sequences into about that many ranges per worker CPU, for load balance."""

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        units_per_cpu: int = 2,
        quiet: bool = True,
    ) -> None:
        self.address = address
        self.num_cpus = num_cpus
        self.units_per_cpu = max(1, units_per_cpu)
        self.quiet = quiet

    def run(
        self,
        source: TraceSource,
        reduction: Reduction[Any, R],
        *,
        max_rows: int,
        progress: Progress | None,
    ) -> R:
        ray = _import_ray()
        started = False
        if not ray.is_initialized():
            ray.init(
                address=self.address,
                num_cpus=self.num_cpus if self.address is None else None,
                include_dashboard=False,
                log_to_driver=not self.quiet,
                logging_level=logging.ERROR if self.quiet else logging.WARNING,
            )
            started = True
        try:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            units = plan_units(
                source, reduction, max_rows=max_rows, shards=cpus * self.units_per_cpu
            )
            total = sum(u.rows for u in units)
            task = ray.remote(_map_unit_task).options(num_cpus=1)
            source_ref = ray.put(source)
            refs = [task.remote(source_ref, reduction, u, max_rows) for u in units]
            index = {ref: i for i, ref in enumerate(refs)}
            partials: list[Any] = [None] * len(refs)
            pending, done = list(refs), 0
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                i = index[ready[0]]
                try:
                    partials[i] = ray.get(ready[0])
                except Exception as exc:  # a worker's error, wrapped by Ray
                    first = str(exc).strip().splitlines()
                    raise RayError(
                        f"a Ray task of {reduction.name} failed ({type(exc).__name__}: "
                        f"{first[-1] if first else ''})"
                    ) from exc
                done += units[i].rows
                if progress is not None:
                    progress(done, total)
            return reduction.finalize(merge_all(reduction, partials))
        finally:
            if started:
                ray.shutdown()
