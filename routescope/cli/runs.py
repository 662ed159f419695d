"""`routescope runs`, `routescope export` and `routescope migrate`: what a store holds, a run as
Parquet, and converting a store written by an earlier version."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from routescope.cli._app import DEFAULT_DB, app

if TYPE_CHECKING:
    import polars as pl
    from rich.console import JustifyMethod
    from rich.table import Table


@app.command()
def runs(
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to read."),
) -> None:
    """List the runs in the store, newest first."""
    from rich.console import Console

    from routescope.store.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        frame = store.runs()
    table = runs_table(frame, f"runs in {db}")
    console = Console()
    if frame.height == 0:
        console.print(f"no runs in {db}; record one with `routescope collect`")
        return
    console.print(table)


@app.command()
def export(
    run: str = typer.Argument(..., help="Run id or name ('latest' for the newest)."),
    parquet: Path = typer.Option(..., "--parquet", help="Directory to write (created if needed)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to read."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary line."),
) -> None:
    """Write a run as hive-partitioned Parquet (routes/run_id=…/layer=…, tokens, sequences, runs)."""
    from rich.console import Console

    from routescope.store.parquet import export_parquet
    from routescope.store.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        run_id = store.resolve_run(run)
        counts = export_parquet(store, run_id, parquet)
    if not quiet:
        Console(stderr=True).print(
            f"exported run {run_id} to {parquet}: {counts['routes']:,} route rows, "
            f"{counts['tokens']:,} tokens, {counts['sequences']:,} sequences",
            highlight=False,
            soft_wrap=True,
        )


def runs_table(frame: pl.DataFrame, title: str) -> Table:
    """The rich table of `RoutingStore.runs()` shown by `routescope runs` and `routescope demo`."""
    from rich.table import Table

    table = Table(title=title)
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("run", "left"),
        ("model", "left"),
        ("family", "left"),
        ("layers", "right"),
        ("E", "right"),
        ("k", "right"),
        ("tokens", "right"),
        ("sequences", "right"),
        ("labels", "left"),
        ("status", "left"),
        ("source", "left"),
    )
    for col, justify in columns:
        table.add_column(  # the run id is what users copy: wrap it, never cut it
            col,
            justify=justify,
            overflow="fold" if col == "run" else "ellipsis",
        )
    for row in frame.iter_rows(named=True):
        name = (
            row["run_id"]
            if row["name"] in (None, row["run_id"])
            else (f"{row['run_id']} ({row['name']})")
        )
        moe = row["moe_layers"] or []
        layers = (
            f"{len(moe)}/{row['num_layers']}"
            if len(moe) != row["num_layers"]
            else str(row["num_layers"])
        )
        labels = ", ".join(x for x in (row["labels"] or []) if x is not None)
        table.add_row(
            name,
            str(row["model_id"]),
            str(row["family"]),
            layers,
            str(row["num_experts"]),
            str(row["top_k"]),
            f"{row['tokens']:,}",
            f"{row['sequences']:,}",
            labels if len(labels) <= 40 else labels[:37] + "…",
            str(row["status"]),
            str(row.get("source") or "routescope")
            + ("" if row.get("has_weights", True) else " (no weights)"),
        )
    return table


@app.command()
def migrate(
    db: str = typer.Argument(DEFAULT_DB, help="DuckDB store to convert in place."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary."),
) -> None:
    """Convert a store written by an earlier routescope to the current schema, in place (each
    run's routes are rewritten clustered by layer; stored analysis results are dropped)."""
    from pathlib import Path

    from rich.console import Console

    from routescope.core.errors import StoreError
    from routescope.store.connect import connect_retrying
    from routescope.store.layout import migrate as migrate_store
    from routescope.store.layout import schema_version
    from routescope.store.schema import SCHEMA_VERSION

    if not Path(db).is_file():
        raise StoreError(f"no DuckDB store at {db}; give the path of the file to convert")
    err = Console(stderr=True, quiet=quiet)
    con = connect_retrying(db, read_only=False, lock_timeout=30.0)
    try:
        before = schema_version(con)
        with err.status(f"converting {db}…") as status:
            changed = migrate_store(con, db, progress=lambda what: status.update(what))
    finally:
        con.close()
    if changed:
        err.print(
            f"converted {db} from store schema {before} to {SCHEMA_VERSION}",
            soft_wrap=True,
            highlight=False,
        )
    else:
        err.print(
            f"{db} is already at store schema {SCHEMA_VERSION}; nothing to do",
            soft_wrap=True,
            highlight=False,
        )
