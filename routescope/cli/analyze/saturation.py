"""`routescope analyze saturation`: how much two runs' routing agrees over the same tokens."""

from __future__ import annotations

import json

import typer

from routescope.cli._app import DEFAULT_DB, analyze_app


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
) -> None:
    """Router saturation (OLMoE): per layer, mean |S_t ∩ S'_t| / k between two runs over the same
    tokens — two checkpoints of a model, or a steered run and its unsteered twin — beside the
    chance level k/E."""
    from rich.console import Console
    from rich.table import Table

    from routescope.analysis.specialization import router_saturation
    from routescope.store.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        a = store.load_trace(store.resolve_run(run_a), phase=phase)
    with RoutingStore(db_b or db, read_only=True) as store:
        b = store.load_trace(store.resolve_run(run_b), phase=phase)
    frame = router_saturation(a, b)
    if as_json:
        typer.echo(
            json.dumps(
                {"run_a": run_a, "run_b": run_b, "phase": phase, "rows": frame.to_dicts()}, indent=2
            )
        )
        return
    table = Table(title=f"router saturation {run_a} vs {run_b} ({phase}, {a.num_tokens:,} tokens)")
    for col in ("layer", "saturation", "chance k/E"):
        table.add_column(col, justify="right")
    for row in frame.iter_rows(named=True):
        table.add_row(str(row["layer"]), f"{row['saturation']:.3f}", f"{row['chance']:.3f}")
    Console().print(table)
