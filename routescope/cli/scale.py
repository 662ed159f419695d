"""CLI: `routescope merge` (shards into one store) and the scale-out paths of `routescope collect`
(--shard i/n with its own DuckDB file or --parts DIR, and --ray)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from routescope.cli._app import app

if TYPE_CHECKING:
    from routescope.collect.jobs import JobSpec
    from routescope.collect.runner import JobSteering, RunResult


def run_scaled(
    job: JobSpec,
    steering: JobSteering | None,
    quiet: bool,
    shard: str | None,
    parts: Path | None,
    use_ray: bool,
    address: str | None,
    workers: int,
) -> RunResult:
    """Run a job as one shard (own DuckDB file or Parquet parts) or on Ray; returns its RunResult."""
    from routescope.collect.runner import run_job
    from routescope.collect.scaleout import ScaleOutError, Shard, run_ray
    from routescope.store.parts import ParquetPartsStore
    from routescope.store.writer import IntermittentStore

    if use_ray:
        if shard is not None or parts is not None:
            raise ScaleOutError("--ray splits the job itself; leave out --shard and --parts")
        return run_ray(job, steering=steering, address=address, workers=workers, quiet=quiet)
    if address is not None:
        raise ScaleOutError("--address is for --ray; add --ray or leave it out")
    if shard is None:
        raise ScaleOutError("--parts needs --shard i/n (the shard whose parts to write)")
    sh = Shard.parse(shard)
    # the shard's own output stands in for the job's db (in messages and results too)
    if parts is not None:
        with ParquetPartsStore(parts) as store:
            return run_job(
                job.with_overrides(db=str(parts)),
                quiet=quiet,
                select=sh,
                store=store,
                steering=steering,
            )
    shard_job = job.with_overrides(db=sh.default_db(job.db))
    with IntermittentStore(shard_job.db) as writer:
        if job.steering is not None:  # the run names its preset: the shard holds it too
            from routescope.steering.presets import copy_preset

            with writer.open() as st:
                copy_preset(job.steering, job.db, st.con)
        return run_job(shard_job, quiet=quiet, select=sh, store=writer, steering=steering)


@app.command()
def merge(
    out: Path = typer.Argument(..., help="DuckDB store to merge into (created if missing)."),
    parts: list[Path] = typer.Argument(..., help="Shards: DuckDB files or Parquet part dirs."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Bring collection shards (from `collect --shard i/n`) together into one store: each run's
    row once (shards must agree on model and config), sequences never twice."""
    from rich.console import Console

    from routescope.store.merge import merge_stores

    result = merge_stores(str(out), [str(p) for p in parts], quiet=quiet)
    if not quiet:
        err = Console(stderr=True)
        for run_id, r in result.runs.items():
            of = f" of {r['total']}" if r["total"] is not None else ""
            err.print(
                f"run {run_id}: +{r['sequences']} sequences, {r['stored']}{of} stored, "
                f"status {r['status']} → {out}",
                highlight=False,
                soft_wrap=True,
            )
