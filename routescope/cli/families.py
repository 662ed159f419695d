"""`routescope families`: the model families routescope can record, from the adapter registry."""

from __future__ import annotations

import json

import typer

from routescope.cli._app import app


@app.command()
def families(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the supported MoE model families (built in, or added by an installed plugin): the
    model types each serves and its routing function."""
    from rich.console import Console
    from rich.table import Table

    from routescope.models.adapters.registry import registered_adapters

    entries = registered_adapters()
    if as_json:
        rows = [
            {
                "family": e.family,
                "label": e.label,
                "model_types": list(e.model_types),
                "routing": e.routing,
                "builtin": e.builtin,
            }
            for e in entries
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="supported model families (routescope/models/adapters/README.md adds one)")
    for col in ("family", "model types", "routing", "from"):
        table.add_column(col)
    for e in entries:
        table.add_row(
            e.label, ", ".join(e.model_types), e.routing, "built in" if e.builtin else "plugin"
        )
    Console().print(table)
