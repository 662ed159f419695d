"""The typer application objects shared by the CLI modules (each module registers its commands)."""

from __future__ import annotations

import typer

from routescope.core.defaults import DEFAULT_DB

__all__ = ["DEFAULT_DB", "analyze_app", "app"]

app = typer.Typer(
    name="routescope",
    help="Record, analyse and steer the routing of Mixture-of-Experts language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
analyze_app = typer.Typer(help="Analyses over a collected run.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")
