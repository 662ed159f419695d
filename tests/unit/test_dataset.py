"""`connect_store`: a DuckDB file or a Parquet export seen as the same typed tables; lock retries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from routescope.core.errors import StoreError
from routescope.store.dataset import connect_store, schema_columns
from routescope.store.parquet import export_parquet
from routescope.store.schema import DDL
from routescope.store.store import RoutingStore

# run ids that hive partitioning would mangle if it guessed types: "007" → 7, "12" → 12
RUNS = [("007", "toy/moe", 4, 2, "2026-01-01 10:00:00"), ("12", "toy/moe", 4, 2, "2026-01-02")]
ROUTES = {
    # (run_id, seq_id, pos, layer) → experts
    ("007", 1, 0, 3): [2, 0],
    ("007", 1, 1, 3): [1, 2],
    ("007", 1, 0, 5): [3, 1],
    ("007", 1, 1, 5): [3, 0],
    ("12", 4, 0, 3): [0, 1],
}


def _fill(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)
    for run_id, model, e, k, created in RUNS:
        con.execute(
            "INSERT INTO runs (run_id, name, model_id, num_experts, top_k, moe_layers, config, "
            "created_at) VALUES (?, ?, ?, ?, ?, [3, 5], ?, ?)",
            [run_id, f"run {run_id}", model, e, k, '{"batch_size": 2}', created],
        )
    seqs = sorted({(r, s) for r, s, _, _ in ROUTES})
    for run_id, seq_id in seqs:
        con.execute(
            "INSERT INTO sequences VALUES (?, ?, 'toy', ?, 'en', 'hello', 2)",
            [run_id, seq_id, str(seq_id)],
        )
    for run_id, seq_id, pos in sorted({(r, s, p) for r, s, p, _ in ROUTES}):
        con.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, 'prefill', ?)",
            [run_id, seq_id, pos, 100 + pos, f"w{pos}", pos == 1],
        )
    for (run_id, seq_id, pos, layer), ex in ROUTES.items():
        con.execute(
            "INSERT INTO routes VALUES (?, ?, ?, ?, ?, ?)",
            [run_id, seq_id, pos, layer, ex, [0.75, 0.25]],
        )
        con.execute(
            "INSERT INTO router_probs VALUES (?, ?, ?, ?, [0.5, 0.25, 0.125, 0.125])",
            [run_id, seq_id, pos, layer],
        )


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ds") / "store.duckdb"
    con = duckdb.connect(str(path))
    _fill(con)
    con.close()
    return path


@pytest.fixture(scope="module")
def exported(db, tmp_path_factory) -> Path:
    """Both runs exported with the project's own exporter (routescope/store/parquet.py)."""
    out = tmp_path_factory.mktemp("export") / "pq"
    store = RoutingStore(str(db))
    try:
        for run_id, *_ in RUNS:
            export_parquet(store, run_id, out)
    finally:
        store.close()
    return out


def _describe(con, table):
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall()]


_ORDER = {
    "runs": "run_id",
    "sequences": "run_id, seq_id",
    "tokens": "run_id, seq_id, pos",
    "routes": "run_id, seq_id, pos, layer",
    "router_probs": "run_id, seq_id, pos, layer",
    "route_choices": "run_id, seq_id, pos, layer, rank",
}


@pytest.mark.parametrize("table", list(_ORDER))
def test_parquet_export_reads_back_with_the_schema_types_and_rows(db, exported, table):
    f = connect_store(db)
    p = connect_store(exported)
    try:
        assert _describe(p, table) == _describe(f, table)
        q = f"SELECT * FROM {table} ORDER BY {_ORDER[table]}"
        assert p.execute(q).fetchall() == f.execute(q).fetchall()
    finally:
        f.close()
        p.close()


def test_partition_values_keep_their_text(exported):
    con = connect_store(exported)
    try:
        assert con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall() == [
            ("007",),
            ("12",),
        ]
        got = con.execute(
            "SELECT layer, typeof(layer) FROM routes WHERE run_id = '007' GROUP BY ALL ORDER BY 1"
        ).fetchall()
        assert got == [(3, "SMALLINT"), (5, "SMALLINT")]
    finally:
        con.close()


def test_route_choices_on_a_partial_export(tmp_path, db):
    """Only routes/ exported (by hand, with DuckDB): other tables are empty but typed."""
    out = tmp_path / "pq"
    out.mkdir()
    src = duckdb.connect(str(db), read_only=True)
    src.execute(f"COPY routes TO '{out / 'routes'}' (FORMAT parquet, PARTITION_BY (run_id, layer))")
    src.close()
    con = connect_store(out)
    try:
        for table, cols in schema_columns().items():
            assert _describe(con, table) == cols
        assert con.execute("SELECT count(*) FROM router_probs").fetchone() == (0,)
        got = con.execute(
            "SELECT run_id, seq_id, pos, layer, rank, expert FROM route_choices "
            "ORDER BY run_id, seq_id, pos, layer, rank"
        ).fetchall()
        expected = sorted(
            (r, s, p, lay, rank, ex)
            for (r, s, p, lay), experts in ROUTES.items()
            for rank, ex in enumerate(experts)
        )
        assert got == expected
    finally:
        con.close()


def test_extra_columns_pass_through_and_missing_ones_are_null(tmp_path):
    out = tmp_path / "pq"
    (out / "sequences").mkdir(parents=True)
    c = duckdb.connect()
    c.execute(
        f"COPY (SELECT 'r' AS run_id, 5 AS seq_id, 'en' AS label, 0.5 AS difficulty) "
        f"TO '{out / 'sequences' / 'part.parquet'}' (FORMAT parquet)"
    )
    c.close()
    con = connect_store(out)
    try:
        row = con.execute("SELECT seq_id, label, text, difficulty FROM sequences").fetchone()
        assert row == (5, "en", None, 0.5)
        assert dict(_describe(con, "sequences"))["seq_id"] == "BIGINT"
    finally:
        con.close()


def test_file_store_is_read_only_unless_asked(db, tmp_path):
    con = connect_store(db)
    try:
        with pytest.raises(duckdb.Error, match="read-only"):
            con.execute("DELETE FROM routes")
    finally:
        con.close()
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(db.read_bytes())
    con = connect_store(copy, read_only=False)
    try:
        con.execute("DELETE FROM routes WHERE run_id = '12'")
        assert con.execute("SELECT count(*) FROM routes").fetchone() == (4,)
    finally:
        con.close()


def test_clear_errors_for_bad_paths(tmp_path):
    with pytest.raises(StoreError, match="no routing store at .*missing.duckdb"):
        connect_store(tmp_path / "missing.duckdb")
    with pytest.raises(StoreError, match="not a routescope Parquet export"):
        connect_store(tmp_path)
    junk = tmp_path / "junk.duckdb"
    junk.write_text("not a database at all\n" * 100)
    with pytest.raises(StoreError, match="cannot open .*junk.duckdb as a DuckDB database"):
        connect_store(junk)


_HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    con.execute("INSERT INTO runs (run_id, name) VALUES ('late', 'written while locked')")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    """Start a process that opens `path` for writing, commits a row, holds it `seconds`, closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_reader_retries_while_a_writer_holds_the_file(db, tmp_path):
    path = tmp_path / "busy.duckdb"
    path.write_bytes(db.read_bytes())
    proc = _hold_lock(path, 1.0)
    try:
        start = time.monotonic()
        con = connect_store(path)  # the lock is held now: this must wait, not fail
        waited = time.monotonic() - start
        try:
            names = con.execute("SELECT name FROM runs WHERE run_id = 'late'").fetchall()
        finally:
            con.close()
    finally:
        proc.wait(timeout=30)
    assert names == [("written while locked",)]
    assert waited > 0.3  # it really met the lock and retried
    assert proc.returncode == 0


def test_reader_gives_up_with_one_clear_line(db, tmp_path):
    path = tmp_path / "busy.duckdb"
    path.write_bytes(db.read_bytes())
    proc = _hold_lock(path, 1.5)
    try:
        with pytest.raises(StoreError, match=r"still locked for writing by another process") as ei:
            connect_store(path, lock_timeout=0.3)
    finally:
        proc.wait(timeout=30)
    assert "\n" not in str(ei.value)
    assert f"process {proc.pid}" in str(ei.value)
