"""Named steering presets in the store's `steering_presets` table: create, list, show, update, delete.

Functions take a DuckDB connection (a `RoutingStore`'s `store.con`), so the CLI and the dashboard
share one implementation; `job_steering` resolves a collection job's `steering` (a preset name or a
spec file) into what the collection runner applies, so the runner never imports steering. A preset's spec is stored as canonical JSON; when a
model shape is given, the spec is validated against it before it is written. No torch here.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import polars as pl

from routescope.core.errors import RoutescopeError
from routescope.steering.spec import ModelShape, SteeringSpec

if TYPE_CHECKING:
    from routescope.collect.engine import RouterEdit
    from routescope.collect.jobs import JobSpec
    from routescope.collect.runner import JobSteering
    from routescope.models.loading import LoadedModel

__all__ = [
    "Preset",
    "PresetError",
    "create_preset",
    "delete_preset",
    "copy_preset",
    "get_preset",
    "job_steering",
    "list_presets",
    "resolve_spec",
    "update_preset",
]


class PresetError(RoutescopeError):
    """A steering preset name is unknown, taken or invalid."""


@dataclass(frozen=True)
class Preset:
    """One row of `steering_presets`, with its spec parsed."""

    preset_id: str
    name: str
    model_id: str | None
    spec: SteeringSpec
    created_at: datetime | None
    updated_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset_id": self.preset_id,
            "name": self.name,
            "model_id": self.model_id,
            "spec": self.spec.to_dict(),
            "created_at": None if self.created_at is None else self.created_at.isoformat(),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
        }


_COLS = "preset_id, name, model_id, spec, created_at, updated_at"


def _names(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM steering_presets ORDER BY name").fetchall()]


def _unknown(con: duckdb.DuckDBPyConnection, name: str) -> PresetError:
    names = _names(con)
    have = ", ".join(names) if names else "none yet"
    return PresetError(
        f"no steering preset named {name!r} (presets: {have}); create it with "
        "`routescope presets create NAME --spec FILE`"
    )


def _row_to_preset(row: tuple) -> Preset:
    pid, name, model_id, spec, created, updated = row
    parsed = SteeringSpec.from_json(spec if isinstance(spec, str) else json.dumps(spec), name)
    return Preset(pid, name, model_id, parsed, created, updated)


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise PresetError("a preset needs a non-empty name")
    if name.endswith((".toml", ".json")) or "/" in name:
        raise PresetError(
            f"preset name {name!r} looks like a file path; pick a plain name (e.g. 'no-german')"
        )
    return name


def create_preset(
    con: duckdb.DuckDBPyConnection,
    name: str,
    spec: SteeringSpec,
    model_id: str | None = None,
    shape: ModelShape | None = None,
) -> Preset:
    """Store ``spec`` under ``name`` (validated against ``shape`` when given); names are unique."""
    name = _check_name(name)
    if shape is not None:
        spec.validate(shape)
    if con.execute("SELECT 1 FROM steering_presets WHERE name = ?", [name]).fetchall():
        raise PresetError(
            f"a steering preset named {name!r} already exists; pick another name, or update it "
            "with `routescope presets update`"
        )
    pid = uuid.uuid4().hex[:12]
    con.execute(
        "INSERT INTO steering_presets (preset_id, name, model_id, spec) VALUES (?, ?, ?, ?)",
        [pid, name, model_id, spec.to_json()],
    )
    return get_preset(con, name)


def get_preset(con: duckdb.DuckDBPyConnection, name: str) -> Preset:
    """The preset called ``name`` (or with that preset id)."""
    rows = con.execute(
        f"SELECT {_COLS} FROM steering_presets WHERE name = ? OR preset_id = ?", [name, name]
    ).fetchall()
    if not rows:
        raise _unknown(con, name)
    return _row_to_preset(rows[0])


def list_presets(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """All presets: preset_id, name, model_id, edits (count), mode, layers, updated_at."""
    rows = con.execute(f"SELECT {_COLS} FROM steering_presets ORDER BY name").fetchall()
    out = []
    for row in rows:
        p = _row_to_preset(row)
        out.append(
            {
                "preset_id": p.preset_id,
                "name": p.name,
                "model_id": p.model_id,
                "edits": len(p.spec.edits),
                "mode": p.spec.mode,
                "layers": ",".join(str(x) for x in p.spec.layers()),
                "updated_at": p.updated_at,
            }
        )
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "preset_id": pl.String,
        "name": pl.String,
        "model_id": pl.String,
        "edits": pl.Int64,
        "mode": pl.String,
        "layers": pl.String,
        "updated_at": pl.Datetime("us"),
    }
    return pl.DataFrame(out, schema=schema)


def update_preset(
    con: duckdb.DuckDBPyConnection,
    name: str,
    spec: SteeringSpec | None = None,
    model_id: str | None = None,
    shape: ModelShape | None = None,
    new_name: str | None = None,
) -> Preset:
    """Replace a preset's spec and/or model id, or rename it; bumps updated_at."""
    current = get_preset(con, name)
    target_name = current.name if new_name is None else _check_name(new_name)
    if (
        target_name != current.name
        and con.execute("SELECT 1 FROM steering_presets WHERE name = ?", [target_name]).fetchall()
    ):
        raise PresetError(f"a steering preset named {target_name!r} already exists; pick another")
    spec = current.spec if spec is None else spec
    if shape is not None:
        spec.validate(shape)
    con.execute(
        "UPDATE steering_presets SET name = ?, model_id = ?, spec = ?, "
        "updated_at = current_timestamp WHERE preset_id = ?",
        [
            target_name,
            current.model_id if model_id is None else model_id,
            spec.to_json(),
            current.preset_id,
        ],
    )
    return get_preset(con, current.preset_id)


def delete_preset(con: duckdb.DuckDBPyConnection, name: str) -> Preset:
    """Remove the preset called ``name``; returns what was removed."""
    p = get_preset(con, name)
    con.execute("DELETE FROM steering_presets WHERE preset_id = ?", [p.preset_id])
    return p


def resolve_spec(
    ref: str, con: duckdb.DuckDBPyConnection | None = None
) -> tuple[SteeringSpec, str | None]:
    """A spec from a .toml/.json file path or a preset name: ``(spec, preset_id or None)``."""
    path = Path(ref)
    if path.suffix.lower() in (".toml", ".json") or path.is_file():
        return SteeringSpec.from_file(path), None
    if con is None:
        raise PresetError(
            f"{ref!r} is neither a .toml/.json spec file nor a preset (no database given to look "
            "presets up in)"
        )
    p = get_preset(con, ref)
    return p.spec, p.preset_id


def edit_from_spec(spec: dict[str, Any], lm: LoadedModel) -> RouterEdit | None:
    """The engine's `RouterEdit` for `spec` (a dict) on a loaded model (None: nothing to change).

    Module level, so a `JobSteering` that holds it pickles to shards and Ray workers."""
    from routescope.steering.interventions import as_router_edit  # torch only when applied

    return as_router_edit(lm, SteeringSpec.from_dict(spec))


def _is_spec_file(ref: str) -> bool:
    return Path(ref).suffix.lower() in (".toml", ".json") or Path(ref).is_file()


def job_steering(job: JobSpec, con: duckdb.DuckDBPyConnection | None = None) -> JobSteering | None:
    """A collection job's `steering` (preset name or spec file) as the runner's `JobSteering`,
    or None when the job is unsteered. A preset is looked up on `con`, else in the job's store."""
    from functools import partial

    from routescope.collect.runner import JobSteering

    ref = job.steering
    if ref is None:
        return None
    own = None
    if con is None and not _is_spec_file(ref) and Path(job.db).is_file():
        from routescope.store.dataset import connect_store

        con = own = connect_store(job.db, read_only=True)
    try:
        spec, preset_id = resolve_spec(ref, con)
    finally:
        if own is not None:
            own.close()
    as_dict = spec.to_dict()
    return JobSteering(
        steering_id=preset_id or ref, spec=as_dict, make_edit=partial(edit_from_spec, as_dict)
    )


def copy_preset(ref: str, src_db: str, dst_con: duckdb.DuckDBPyConnection) -> None:
    """Copy the preset `ref` from the store at `src_db` into another store (a shard's), so the
    shard's run names a preset it holds; a spec file or an absent store copies nothing."""
    if _is_spec_file(ref) or not Path(src_db).is_file():
        return
    from routescope.store.dataset import connect_store

    src = connect_store(src_db, read_only=True)
    try:
        preset = get_preset(src, ref)
    finally:
        src.close()
    dst_con.execute(
        "INSERT OR IGNORE INTO steering_presets (preset_id, name, model_id, spec, created_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        [
            preset.preset_id,
            preset.name,
            preset.model_id,
            preset.spec.to_json(),
            preset.created_at,
            preset.updated_at,
        ],
    )
