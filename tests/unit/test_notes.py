"""Expert notes in the store: save, edit, delete, per model, and one line on a read-only store."""

from __future__ import annotations

from pathlib import Path

import pytest

from routescope.core.errors import InvalidParameterError, RoutescopeError, StoreError
from routescope.store import RoutingStore
from routescope.store.notes import ExpertNote, delete_note, load_notes, note_labels, save_note


@pytest.fixture()
def con():
    store = RoutingStore(":memory:")
    yield store.con
    store.close()


def rows(con) -> list[tuple]:
    return con.execute(
        "SELECT model_id, layer, expert, label, note FROM expert_notes ORDER BY ALL"
    ).fetchall()


def test_save_load_edit_and_delete(con) -> None:
    assert load_notes(con, "m") == {}
    saved = save_note(con, "m", 2, 5, "  digits ", "fires on numbers\n")
    assert saved == ExpertNote("digits", "fires on numbers")
    save_note(con, "m", 0, 1, "", "a note with no label")
    save_note(con, "other", 2, 5, "not m's")
    assert load_notes(con, "m") == {
        (0, 1): ExpertNote("", "a note with no label"),
        (2, 5): ExpertNote("digits", "fires on numbers"),
    }
    label, note = load_notes(con, "m")[(2, 5)]  # unpacks as (label, note)
    assert (label, note) == ("digits", "fires on numbers")
    # a second save replaces the row (one row per model, layer, expert)
    save_note(con, "m", 2, 5, "numbers")
    assert rows(con) == [
        ("m", 0, 1, "", "a note with no label"),
        ("m", 2, 5, "numbers", ""),
        ("other", 2, 5, "not m's", ""),
    ]
    assert delete_note(con, "m", 0, 1) is True
    assert delete_note(con, "m", 0, 1) is False
    # saving nothing deletes: an empty annotation is no annotation
    save_note(con, "m", 2, 5, " ", "")
    assert load_notes(con, "m") == {}
    assert load_notes(con, "other") == {(2, 5): ExpertNote("not m's", "")}


def test_labels_for_hovers() -> None:
    notes = {
        (0, 1): ExpertNote("digits", "long text"),
        (0, 2): ExpertNote("", "x" * 100),
        (1, 3): ExpertNote("", ""),
    }
    assert note_labels(notes) == {(0, 1): "digits", (0, 2): "x" * 40}


def test_bad_numbers_and_read_only_are_one_line(tmp_path: Path) -> None:
    db = str(tmp_path / "n.duckdb")
    with RoutingStore(db) as store:
        with pytest.raises(InvalidParameterError, match="numbered from 0"):
            save_note(store.con, "m", -1, 0, "x")
        save_note(store.con, "m", 1, 2, "kept")
    with RoutingStore(db, read_only=True) as store:
        assert load_notes(store.con, "m") == {(1, 2): ExpertNote("kept", "")}
        for write in (
            lambda: save_note(store.con, "m", 1, 2, "new"),
            lambda: delete_note(store.con, "m", 1, 2),
        ):
            with pytest.raises(StoreError, match="read-only") as err:
                write()
            assert "\n" not in str(err.value) and isinstance(err.value, RoutescopeError)
        assert load_notes(store.con, "m") == {(1, 2): ExpertNote("kept", "")}
