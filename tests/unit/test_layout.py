"""Physical layout: a finished run is clustered by layer without changing a row; stores of schema
1 are converted in place (`routescope migrate`, or any writable open) and refused read-only with
one line that says how to convert them."""

from __future__ import annotations

import sys

import duckdb
import numpy as np
import pytest
from test_store import batch_of, make_seq, new_run

from routescope.core.errors import StoreError
from routescope.store.layout import CLUSTERED, cluster_run, schema_version
from routescope.store.schema import SCHEMA_VERSION
from routescope.store.store import RoutingStore

TABLES = ("runs", "sequences", "tokens", "routes", "router_probs")


def _fill(path: str, runs: tuple[str, ...] = ("run-a", "run-b")) -> None:
    rng = np.random.default_rng(3)
    with RoutingStore(path) as store:
        for run in runs:
            new_run(store, run)
            for order in ([2, 0], [1, 3]):
                seqs = [make_seq(rng, 3 + i, i % 2) for i in order]
                store.write_batch(run, [{"seq_id": i} for i in order], batch_of(seqs))


def _content(path: str) -> dict[str, list]:
    con = duckdb.connect(path, read_only=True)
    try:
        out = {}
        for t in TABLES[1:]:
            out[t] = sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
        return out
    finally:
        con.close()


def test_clustering_keeps_every_row_and_orders_by_layer(tmp_path):
    path = str(tmp_path / "s.duckdb")
    _fill(path)
    before = _content(path)
    con = duckdb.connect(path)
    physical = [
        r[0] for r in con.execute("SELECT layer FROM routes WHERE run_id = 'run-a'").fetchall()
    ]
    assert physical != sorted(physical)  # written token by token
    cluster_run(con, "run-a")
    rows = con.execute("SELECT layer, seq_id, pos FROM routes WHERE run_id = 'run-a'").fetchall()
    assert rows == sorted(rows)  # physical order: layer, then sequence, then position
    toks = con.execute("SELECT seq_id, pos FROM tokens WHERE run_id = 'run-a'").fetchall()
    assert toks == sorted(toks)
    layout = dict(con.execute("SELECT run_id, layout FROM runs").fetchall())
    assert layout == {"run-a": CLUSTERED, "run-b": None}
    cluster_run(con, "run-a")  # again: nothing changes
    con.close()
    assert _content(path) == before


def test_a_new_batch_unmarks_the_layout_and_finish_run_clusters_again(tmp_path):
    path = str(tmp_path / "s.duckdb")
    _fill(path, ("run-a",))
    rng = np.random.default_rng(9)
    with RoutingStore(path) as store:
        store.finish_run("run-a")
        assert store.run_info("run-a")["layout"] == CLUSTERED
        store.write_batch("run-a", [{"seq_id": 7}], batch_of([make_seq(rng, 4, 0)]))
        assert store.run_info("run-a")["layout"] is None
        store.finish_run("run-a")
        rows = store.con.execute("SELECT layer, seq_id, pos FROM routes").fetchall()
    assert rows == sorted(rows) and len(rows) == (5 + 3 + 5 + 7 + 4) * 3  # tokens x layers


def _make_v1(path: str) -> None:
    """A store as routescope wrote it with schema 1 (no source/has_weights/layout columns, the
    results memo named analysis_cache)."""
    _fill(path)
    con = duckdb.connect(path)
    for col in ("source", "has_weights", "layout"):
        con.execute(f"ALTER TABLE runs DROP COLUMN {col}")
    con.execute("ALTER TABLE analysis_results RENAME TO analysis_cache")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()


def test_schema_1_is_refused_read_only_with_one_line(tmp_path):
    path = str(tmp_path / "old.duckdb")
    _make_v1(path)
    with pytest.raises(
        StoreError, match=r"earlier routescope \(store schema 1\).*routescope migrate"
    ) as exc:
        RoutingStore(path, read_only=True)
    assert "\n" not in str(exc.value)


def test_migrate_converts_schema_1_in_place(tmp_path, monkeypatch, capsys):
    from routescope.cli import main

    path = str(tmp_path / "old.duckdb")
    _make_v1(path)
    before = _content(path)
    monkeypatch.setattr(sys, "argv", ["routescope", "migrate", path])
    main()
    assert "from store schema 1 to 2" in capsys.readouterr().err
    con = duckdb.connect(path, read_only=True)
    assert schema_version(con) == SCHEMA_VERSION
    assert {r[0] for r in con.execute("SELECT layout FROM runs").fetchall()} == {CLUSTERED}
    tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    con.close()
    assert "analysis_results" in tables and "analysis_cache" not in tables
    after = _content(path)
    for t in ("sequences", "tokens", "routes", "router_probs"):
        assert after[t] == before[t], t
    with RoutingStore(path, read_only=True) as store:  # readable now
        assert store.runs().height == 2
    main()  # a second time: nothing to do
    assert "already at store schema 2" in capsys.readouterr().err


def test_a_writable_open_migrates_too(tmp_path):
    path = str(tmp_path / "old.duckdb")
    _make_v1(path)
    with RoutingStore(path) as store:
        assert store.run_info("run-a")["layout"] == CLUSTERED
        assert store.run_info("run-a")["source"] == "routescope"
