"""`routescope analyze saturation`: how much two runs' routing agrees over the same tokens, read
from the store in step, chunk by chunk (bounded memory), and kept in its memo of results."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from routescope.cli._analysis import (
    ADDRESS_HELP,
    RAY_HELP,
    LazyBar,
    analysis_executor,
    run_fingerprint,
)
from routescope.cli._app import DEFAULT_DB, analyze_app

if TYPE_CHECKING:
    import polars as pl


def _same_store(a: str, b: str) -> bool:
    return a == b or Path(a).resolve() == Path(b).resolve()


@analyze_app.command("saturation")
def saturation_cmd(
    run_a: str = typer.Argument(..., help="First run (e.g. the unsteered run, or checkpoint A)."),
    run_b: str = typer.Argument(..., help="Second run over the same prompts (steered, or B)."),
    db: str = typer.Option(DEFAULT_DB, help="Store holding run A (DuckDB file or Parquet dir)."),
    db_b: str | None = typer.Option(None, "--db-b", help="Store holding run B (default: --db)."),
    phase: str = typer.Option(
        "prefill", help="prefill (default: the tokens both runs share), decode or all."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    use_ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Router saturation (OLMoE): per layer, mean |S_t ∩ S'_t| / k between two runs over the same
    tokens — two checkpoints of a model, or a steered run and its unsteered twin — beside the
    chance level k/E."""
    from rich.console import Console
    from rich.table import Table

    from routescope.analysis.specialization import router_saturation
    from routescope.store.store import RoutingStore

    err = Console(stderr=True, quiet=quiet or as_json)
    with ExitStack() as stack:
        store_a = stack.enter_context(RoutingStore(db, read_only=True))
        other_db = db_b if db_b is not None and not _same_store(db, db_b) else None
        store_b = (
            store_a
            if other_db is None
            else stack.enter_context(RoutingStore(other_db, read_only=True))
        )
        executor = stack.enter_context(analysis_executor(use_ray, address, quiet or as_json))
        id_a, id_b = store_a.resolve_run(run_a), store_b.resolve_run(run_b)
        src_a = store_a.source(id_a, phase=phase)
        src_b = store_b.source(id_b, phase=phase)
        params = {
            "run_b": run_fingerprint(store_b, id_b, src_b),
            "store_b": None if other_db is None else str(Path(other_db).resolve()),
            "phase": phase,
        }

        def compute() -> pl.DataFrame:
            with LazyBar(err, f"comparing {id_a} with {id_b}") as bar:
                return router_saturation(src_a, src_b, progress=bar, executor=executor)

        frame = store_a.memo_result(id_a, "router_saturation", params, compute)
        n_tokens = src_a.info.num_tokens
    if as_json:
        typer.echo(
            json.dumps(
                {"run_a": run_a, "run_b": run_b, "phase": phase, "rows": frame.to_dicts()}, indent=2
            )
        )
        return
    table = Table(title=f"router saturation {run_a} vs {run_b} ({phase}, {n_tokens:,} tokens)")
    for col in ("layer", "saturation", "chance k/E"):
        table.add_column(col, justify="right")
    for row in frame.iter_rows(named=True):
        table.add_row(str(row["layer"]), f"{row['saturation']:.3f}", f"{row['chance']:.3f}")
    Console().print(table)
