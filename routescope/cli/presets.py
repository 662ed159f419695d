"""`routescope presets …`: named steering presets stored in the database (create, list, show,
update, delete)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from routescope.cli._app import DEFAULT_DB, app
from routescope.cli.steer import _shape_of

presets_app = typer.Typer(
    help="Named steering presets stored in the database.", no_args_is_help=True
)
app.add_typer(presets_app, name="presets")


@presets_app.command("list")
def presets_list(
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List stored steering presets."""
    from rich.console import Console
    from rich.table import Table

    from routescope.steering.presets import list_presets
    from routescope.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        frame = list_presets(store.con)
    out = Console()
    if as_json:
        out.print_json(json.dumps(frame.to_dicts(), default=str))
        return
    table = Table(title=f"steering presets in {db}")
    for col in frame.columns:
        table.add_column(col)
    for r in frame.iter_rows():
        table.add_row(*["" if v is None else str(v) for v in r])
    out.print(table)


@presets_app.command("show")
def presets_show(
    name: str = typer.Argument(..., help="Preset name (or id)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file."),
) -> None:
    """Print a preset (with its spec) as JSON."""
    from rich.console import Console

    from routescope.steering.presets import get_preset
    from routescope.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        p = get_preset(store.con, name)
    Console().print_json(json.dumps(p.to_dict()))


@presets_app.command("create")
def presets_create(
    name: str = typer.Argument(..., help="New preset name."),
    spec: Path = typer.Option(..., "--spec", help="Steering spec file (.toml or .json)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Validate against this model ('demo', path or hub id)."
    ),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file."),
) -> None:
    """Store a spec file under a name (validated against --model when given)."""
    from routescope.steering.presets import create_preset
    from routescope.steering.spec import SteeringSpec
    from routescope.store import RoutingStore

    the_spec = SteeringSpec.from_file(spec)
    shape = _shape_of(model) if model is not None else None
    with RoutingStore(db) as store:
        p = create_preset(store.con, name, the_spec, model_id=model, shape=shape)
    typer.echo(f"created preset {p.name} ({p.preset_id}): {len(p.spec.edits)} edit(s)")


@presets_app.command("update")
def presets_update(
    name: str = typer.Argument(..., help="Preset name (or id)."),
    spec: Path | None = typer.Option(None, "--spec", help="Replace the spec with this file."),
    rename: str | None = typer.Option(None, "--rename", help="New name."),
    model: str | None = typer.Option(None, "--model", "-m", help="Validate against this model."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file."),
) -> None:
    """Replace a preset's spec, rename it, or re-validate it against a model."""
    from routescope.steering.presets import update_preset
    from routescope.steering.spec import SteeringSpec
    from routescope.store import RoutingStore

    the_spec = SteeringSpec.from_file(spec) if spec is not None else None
    shape = _shape_of(model) if model is not None else None
    with RoutingStore(db) as store:
        p = update_preset(
            store.con, name, spec=the_spec, model_id=model, shape=shape, new_name=rename
        )
    typer.echo(f"updated preset {p.name} ({p.preset_id}): {len(p.spec.edits)} edit(s)")


@presets_app.command("delete")
def presets_delete(
    name: str = typer.Argument(..., help="Preset name (or id)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file."),
) -> None:
    """Delete a preset."""
    from routescope.steering.presets import delete_preset
    from routescope.store import RoutingStore

    with RoutingStore(db) as store:
        p = delete_preset(store.con, name)
    typer.echo(f"deleted preset {p.name} ({p.preset_id})")


@presets_app.command("export")
def presets_export(
    name: str = typer.Argument(..., help="Preset name (or id)."),
    fmt: str = typer.Option(
        ..., "--format", help="easysteer (layer_configs JSON) or steermoe (risk-difference CSV)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Write here (default: standard output)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file."),
) -> None:
    """Write a preset for a serving-time steering tool (EasySteer, SteerMoE)."""
    from routescope.steering.exports import export_preset
    from routescope.steering.presets import get_preset
    from routescope.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        p = get_preset(store.con, name)
    text = export_preset(p.spec, fmt)
    if out is None:
        typer.echo(text, nl=False)
        return
    out.write_text(text)
    typer.echo(f"wrote preset {p.name} as {fmt} to {out}")
