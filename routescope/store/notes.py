"""Expert annotations in the store's `expert_notes` table: load a model's notes, save or delete one.

A note names what an expert seems to do ("digits", "German function words"); it belongs to the
model, not to a run, so every run of the model shows it (the dashboard's hovers, tables and
pickers). Functions take a DuckDB connection (a `RoutingStore`'s `store.con`), like
`routescope.steering.presets`, so the dashboard and any script share one implementation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import duckdb

from routescope.core.errors import InvalidParameterError, StoreError

__all__ = [
    "ExpertNote",
    "delete_note",
    "load_notes",
    "note_labels",
    "save_note",
]

#: Characters of a note shown in place of a missing label (hover texts stay short).
SHORT_NOTE = 40


class ExpertNote(NamedTuple):
    """One expert's annotation: a short label and a free note (either may be empty)."""

    label: str
    note: str


def _key(layer: int, expert: int) -> tuple[int, int]:
    layer, expert = int(layer), int(expert)
    if layer < 0 or expert < 0:
        raise InvalidParameterError(
            f"layer {layer}, expert {expert}: layers and experts are numbered from 0"
        )
    return layer, expert


def _write(con: duckdb.DuckDBPyConnection, sql: str, params: list[object]) -> None:
    """A write statement, or one line when the store cannot be written (read-only, an export)."""
    try:
        con.execute(sql, params)
    except (duckdb.InvalidInputException, duckdb.PermissionException) as exc:
        raise StoreError(
            "cannot save expert notes: this store is open read-only (or is a Parquet export); "
            "open the DuckDB file for writing"
        ) from exc


def load_notes(con: duckdb.DuckDBPyConnection, model_id: str) -> dict[tuple[int, int], ExpertNote]:
    """(layer, expert) → the model's annotation of that expert (empty dict when it has none)."""
    try:
        rows = con.execute(
            "SELECT layer, expert, coalesce(label, ''), coalesce(note, '') FROM expert_notes "
            "WHERE model_id = ? ORDER BY layer, expert",
            [model_id],
        ).fetchall()
    except duckdb.CatalogException:  # a Parquet export of a store without notes
        return {}
    return {(int(r[0]), int(r[1])): ExpertNote(str(r[2]), str(r[3])) for r in rows}


def save_note(
    con: duckdb.DuckDBPyConnection,
    model_id: str,
    layer: int,
    expert: int,
    label: str,
    note: str = "",
) -> ExpertNote:
    """Create or replace one expert's annotation (label and note stripped); returns what is
    stored. An empty label and note delete the annotation instead (nothing left to show)."""
    key = _key(layer, expert)
    saved = ExpertNote((label or "").strip(), (note or "").strip())
    if not saved.label and not saved.note:
        delete_note(con, model_id, *key)
        return saved
    _write(
        con,
        "INSERT OR REPLACE INTO expert_notes (model_id, layer, expert, label, note, updated_at) "
        "VALUES (?, ?, ?, ?, ?, current_timestamp)",
        [model_id, *key, saved.label, saved.note],
    )
    return saved


def delete_note(con: duckdb.DuckDBPyConnection, model_id: str, layer: int, expert: int) -> bool:
    """Remove one expert's annotation; True when there was one."""
    key = _key(layer, expert)
    had = con.execute(
        "SELECT count(*) FROM expert_notes WHERE model_id = ? AND layer = ? AND expert = ?",
        [model_id, *key],
    ).fetchall()[0][0]
    if had:
        _write(
            con,
            "DELETE FROM expert_notes WHERE model_id = ? AND layer = ? AND expert = ?",
            [model_id, *key],
        )
    return bool(had)


def note_labels(notes: Mapping[tuple[int, int], ExpertNote]) -> dict[tuple[int, int], str]:
    """(layer, expert) → its label, or the note's first words when it has no label: the short
    text figures put in hovers (experts with neither are left out)."""
    out = {}
    for key, (label, note) in notes.items():
        text = label or note[:SHORT_NOTE]
        if text:
            out[key] = text
    return out
