"""`routescope merge`: collection shards (DuckDB files or Parquet part dirs) into one store."""

from __future__ import annotations

from pathlib import Path

import typer

from routescope.cli._app import app


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
