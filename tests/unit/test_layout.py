"""Physical layout: a finished run is clustered by layer without changing a row; stores of schema
1 are converted in place (`routescope migrate`, or any writable open) and refused read-only with
one line that says how to convert them."""

from __future__ import annotations

import sys
from pathlib import Path

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


# ---- compaction: a finished file holds its data about once -----------------------------------

ALL_TABLES = ("runs", "sequences", "tokens", "routes", "router_probs", "analysis_results", "meta")


def _fill_big(store: RoutingStore, run: str, n_seqs: int, seed: int = 5) -> None:
    """n_seqs sequences of 20-30 tokens (x 3 layers of route rows), written 8 per batch."""
    rng = np.random.default_rng(seed)
    new_run(store, run)
    ids = rng.permutation(n_seqs).tolist()
    for start in range(0, n_seqs, 8):
        chunk = ids[start : start + 8]
        seqs = [make_seq(rng, 15 + i % 11, 5 + i % 3) for i in chunk]
        store.write_batch(run, [{"seq_id": i} for i in chunk], batch_of(seqs))


def _everything(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    """Every row of every table (runs without its layout column), sorted."""
    out = {}
    for t in ALL_TABLES:
        cols = [r[0] for r in con.execute(f"DESCRIBE {t}").fetchall() if r[0] != "layout"]
        sel = ", ".join(cols)
        out[t] = sorted(con.execute(f"SELECT {sel} FROM {t}").fetchall(), key=repr)
    return out


def _physical(con: duckdb.DuckDBPyConnection, run: str) -> list[tuple]:
    return con.execute(
        "SELECT layer, seq_id, pos FROM routes WHERE run_id = ? ORDER BY rowid", [run]
    ).fetchall()


def _copies(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if ".compact-" in p.name)


def _memo(store: RoutingStore, run: str) -> None:
    import polars as pl

    store.memo_result(run, "test.kind", {"x": 1}, lambda: pl.DataFrame({"v": [1, 2, 3]}))


def test_finish_run_compacts_the_file_and_keeps_every_row(tmp_path):
    path = str(tmp_path / "s.duckdb")
    with RoutingStore(path) as store:
        _fill_big(store, "run-b", 16, seed=1)  # another run, left unfinished
        _fill_big(store, "run-a", 200)  # ~15,000 route rows
        _memo(store, "run-a")
        store.set_meta("job_sequences:run-a", {"sequences": 200})
        store.con.execute("CHECKPOINT")
        before_bytes = Path(path).stat().st_size
        before_inode = Path(path).stat().st_ino
        before = _everything(store.con)
        b_order = _physical(store.con, "run-b")
        assert _physical(store.con, "run-a") != sorted(_physical(store.con, "run-a"))
        store.finish_run("run-a")
        # the same connection reads the compacted file
        assert _everything(store.con) == before
        assert store.run_info("run-a")["layout"] == CLUSTERED
        assert store.run_info("run-b")["layout"] is None
        rows = _physical(store.con, "run-a")
        assert rows == sorted(rows)  # rowid order: layer, sequence, position
        toks = store.con.execute(
            "SELECT seq_id, pos FROM tokens WHERE run_id = 'run-a' ORDER BY rowid"
        ).fetchall()
        assert toks == sorted(toks)
        assert _physical(store.con, "run-b") == b_order  # other runs as they were
        assert store.con.execute("SELECT current_database()").fetchall() == [("s",)]
    after_bytes = Path(path).stat().st_size
    assert after_bytes <= before_bytes * 1.25, (before_bytes, after_bytes)  # in place: ~1.5x
    assert Path(path).stat().st_ino != before_inode  # a new file was swapped in
    assert _copies(tmp_path) == []
    con = duckdb.connect(path, read_only=True)
    try:
        assert _everything(con) == before
        assert schema_version(con) == SCHEMA_VERSION
        free, total = con.execute(
            "SELECT free_blocks, total_blocks FROM pragma_database_size()"
        ).fetchall()[0]
        assert free <= 0.25 * total
    finally:
        con.close()
    with RoutingStore(path, read_only=True) as store:  # the memo survived
        n = store.con.execute("SELECT count(*) FROM analysis_results").fetchall()[0][0]
        assert n == 1 and store.run_info("run-a")["layout"] == CLUSTERED


def test_the_store_keeps_working_after_compaction(tmp_path):
    path = str(tmp_path / "s.duckdb")
    with RoutingStore(path) as store:
        _fill_big(store, "run-a", 40)
        store.finish_run("run-a")
        _fill_big(store, "run-b", 40, seed=2)
        trace = store.load_trace("run-b")
        assert trace.num_tokens == store.runs().filter(run_id="run-b")["tokens"][0]
        store.finish_run("run-b")
        store.finish_run("run-b")  # already clustered: nothing to do
        assert _physical(store.con, "run-b") == sorted(_physical(store.con, "run-b"))
        again = store.load_trace("run-b")
        np.testing.assert_array_equal(again.experts, trace.experts)
        np.testing.assert_array_equal(again.weights, trace.weights)
    with RoutingStore(path) as store:  # reopened: both runs there, clustered
        assert {store.run_info(r)["layout"] for r in ("run-a", "run-b")} == {CLUSTERED}


def test_a_small_run_in_a_large_store_is_clustered_in_place(tmp_path):
    path = str(tmp_path / "s.duckdb")
    with RoutingStore(path) as store:
        _fill_big(store, "run-a", 200)
        store.finish_run("run-a")
        _fill_big(store, "run-b", 8, seed=2)  # ~4% of the rows: not worth copying the store
        inode = Path(path).stat().st_ino
        store.finish_run("run-b")
        assert Path(path).stat().st_ino == inode
        assert store.run_info("run-b")["layout"] == CLUSTERED
        assert _physical(store.con, "run-b") == sorted(_physical(store.con, "run-b"))


def test_an_in_memory_store_is_clustered_in_place():
    with RoutingStore(":memory:") as store:
        _fill_big(store, "run-a", 16)
        store.finish_run("run-a")
        assert store.run_info("run-a")["layout"] == CLUSTERED
        assert _physical(store.con, "run-a") == sorted(_physical(store.con, "run-a"))


@pytest.mark.parametrize("where", ["copy", "replace"])
def test_a_failed_compaction_leaves_the_original_intact(tmp_path, monkeypatch, where):
    import routescope.store.layout as layout

    path = str(tmp_path / "s.duckdb")
    with RoutingStore(path) as store:
        _fill_big(store, "run-a", 40)
        before = _everything(store.con)
        order = _physical(store.con, "run-a")
        inode = Path(path).stat().st_ino

        def boom(*args, **kwargs):
            raise OSError("disk full (test)")

        if where == "copy":  # fails after the schema and the first tables are copied
            real = layout._CLUSTER_ORDER
            monkeypatch.setattr(layout, "_CLUSTER_ORDER", {**real, "routes": "no_such_column"})
        else:
            monkeypatch.setattr(layout.os, "replace", boom)
        with pytest.raises((OSError, duckdb.Error)):
            store.finish_run("run-a")
        assert _copies(tmp_path) == []
        assert Path(path).stat().st_ino == inode
        # the store still works on the untouched original
        assert _everything(store.con) == before
        assert _physical(store.con, "run-a") == order
        assert store.run_info("run-a")["layout"] is None
        monkeypatch.undo()
        store.finish_run("run-a")  # and a later finish compacts it
        assert _physical(store.con, "run-a") == sorted(order)
    assert _copies(tmp_path) == []


def test_a_crashed_compactions_copy_is_removed_on_the_next_writable_open(tmp_path):
    import os

    path = str(tmp_path / "s.duckdb")
    _fill(path, ("run-a",))
    old, live = Path(path + ".compact-123.tmp"), Path(path + ".compact-456.tmp")
    for p in (old, Path(str(old) + ".wal"), live):
        p.write_bytes(b"x")
    for p in (old, Path(str(old) + ".wal")):
        os.utime(p, (1_000_000, 1_000_000))  # long ago
    with RoutingStore(path, read_only=True):
        pass  # a reader leaves them
    assert len(_copies(tmp_path)) == 3
    RoutingStore(path).close()
    assert _copies(tmp_path) == [live.name]  # a recent one may be a live compaction's


def test_merge_output_holds_its_data_once(tmp_path):
    from routescope.store.merge import merge_stores

    shards = []
    for i in range(2):
        shard = str(tmp_path / f"shard{i}.duckdb")
        with RoutingStore(shard) as store:
            _fill_big(store, "run-a", 100, seed=3)
            store.con.execute("DELETE FROM sequences WHERE seq_id % 2 <> ?", [i])
            for t in ("tokens", "routes", "router_probs"):
                store.con.execute(f"DELETE FROM {t} WHERE seq_id % 2 <> ?", [i])
        shards.append(shard)
    out = str(tmp_path / "out.duckdb")
    merge_stores(out, shards, quiet=True)
    con = duckdb.connect(out, read_only=True)
    try:
        free, total = con.execute(
            "SELECT free_blocks, total_blocks FROM pragma_database_size()"
        ).fetchall()[0]
        assert free <= 0.25 * total, (free, total)
        rows = _physical(con, "run-a")
        assert rows == sorted(rows) and len({s for _, s, _ in rows}) == 100
        assert con.execute("SELECT layout FROM runs").fetchall() == [(CLUSTERED,)]
    finally:
        con.close()
    assert _copies(tmp_path) == []
