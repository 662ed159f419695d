"""`routescope sql`: formats, parameters, --list, refusal of writes, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from routescope.cli import main
from routescope.store.schema import DDL

E = 4
# run r1: (seq_id, pos, layer) → experts; run r0 is older and smaller
ROUTES = {
    "r1": {
        (0, 0, 1): [0, 2],
        (0, 1, 1): [0, 1],
        (0, 2, 1): [2, 0],
        (1, 0, 1): [3, 0],
        (0, 0, 2): [1, 2],
        (0, 1, 2): [1, 3],
        (0, 2, 2): [1, 2],
        (1, 0, 2): [2, 1],
    },
    "r0": {(0, 0, 1): [3, 2]},
}


def _build(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute(DDL)
    for day, run_id in enumerate(["r0", "r1"], start=1):
        con.execute(
            "INSERT INTO runs (run_id, name, model_id, num_experts, top_k, created_at) "
            "VALUES (?, ?, 'toy', ?, 2, ?)",
            [run_id, f"name-{run_id}", E, f"2026-01-0{day}"],
        )
        for seq_id, pos, layer in ROUTES[run_id]:
            if layer == min(lay for _, _, lay in ROUTES[run_id]):
                con.execute(
                    "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, 'prefill', false)",
                    [run_id, seq_id, pos, 7 + pos, f"w{pos}"],
                )
        for (seq_id, pos, layer), ex in ROUTES[run_id].items():
            con.execute(
                "INSERT INTO routes VALUES (?, ?, ?, ?, ?, [0.6, 0.4])",
                [run_id, seq_id, pos, layer, ex],
            )
    con.close()


@pytest.fixture()
def db(tmp_path) -> Path:
    path = tmp_path / "store.duckdb"
    _build(path)
    return path


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `routescope ARGS` in-process through the real entry point; (exit code, out, err)."""
    monkeypatch.setattr(sys, "argv", ["routescope", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def expected_load(run_id: str) -> list[dict]:
    """expert_load by hand: assignments per (layer, expert), share of the layer's assignments."""
    rows = ROUTES[run_id]
    out = []
    for layer in sorted({lay for _, _, lay in rows}):
        lists = [ex for (_, _, lay), ex in rows.items() if lay == layer]
        cnt = Counter(x for ex in lists for x in ex)
        total = sum(len(ex) for ex in lists)
        for e in range(E):
            out.append(dict(layer=layer, expert=e, assignments=cnt[e], share=cnt[e] / total))
    return out


def _check_load(rows: list[dict], run_id: str) -> None:
    exp = expected_load(run_id)
    assert [(r["layer"], r["expert"], r["assignments"]) for r in rows] == [
        (r["layer"], r["expert"], r["assignments"]) for r in exp
    ]
    for got, want in zip(rows, exp, strict=True):
        assert float(got["share"]) == pytest.approx(want["share"], rel=1e-6)


def test_named_query_as_csv_and_json(monkeypatch, capsys, db):
    code, out, err = cli(
        monkeypatch, capsys, "sql", "expert_load", "--db", str(db), "-p", "run_id=r1", "-f", "csv"
    )
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    _check_load(
        [
            {
                **r,
                "layer": int(r["layer"]),
                "expert": int(r["expert"]),
                "assignments": int(r["assignments"]),
            }
            for r in rows
        ],
        "r1",
    )
    code, out, err = cli(monkeypatch, capsys, "sql", "expert_load", "--db", str(db), "-f", "json")
    assert code == 0, err
    _check_load(json.loads(out), "r1")  # default run: the newest, r1
    code, out, err = cli(
        monkeypatch,
        capsys,
        "sql",
        "expert_load",
        "--db",
        str(db),
        "-p",
        "run_id=name-r0",
        "-f",
        "json",
    )
    assert code == 0, err
    _check_load(json.loads(out), "r0")  # a run's name works as well as its id


def test_parquet_output(monkeypatch, capsys, db, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "sql", "expert_load", "--db", str(db), "-f", "parquet")
    assert code == 2
    assert err.strip() == "error: --format parquet writes a file: add --output FILE.parquet"
    target = tmp_path / "load.parquet"
    code, _, err = cli(
        monkeypatch,
        capsys,
        "sql",
        "expert_load",
        "--db",
        str(db),
        "-f",
        "parquet",
        "-o",
        str(target),
    )
    assert code == 0, err
    table = pq.read_table(target)
    assert table.schema.field("assignments").type == "int64"
    _check_load(table.to_pylist(), "r1")


def test_table_output_caps_rows(monkeypatch, capsys, db):
    code, out, _ = cli(monkeypatch, capsys, "sql", "expert_load", "--db", str(db))
    assert code == 0
    assert "assignments" in out and "8 rows" in out
    code, out, _ = cli(
        monkeypatch, capsys, "sql", "expert_load", "--db", str(db), "--max-rows", "3"
    )
    assert code == 0
    assert "showing 3 of 8 rows" in out


def test_inline_sql_file_and_typed_params(monkeypatch, capsys, db, tmp_path):
    code, out, _ = cli(
        monkeypatch, capsys, "sql", "SELECT count(*) AS n FROM routes", "--db", str(db), "-f", "csv"
    )
    assert (code, out) == (0, f"n\n{sum(len(v) for v in ROUTES.values())}\n")
    q = "SELECT typeof(getvariable('a')) AS a, typeof(getvariable('b')) AS b"
    code, out, _ = cli(
        monkeypatch, capsys, "sql", q, "--db", str(db), "-p", "a=3", "-p", "b=007", "-f", "json"
    )
    assert json.loads(out) == [{"a": "INTEGER", "b": "VARCHAR"}]
    f = tmp_path / "mine.sql"
    f.write_text(
        "-- Routes of one layer.\nSELECT count(*) AS n FROM routes WHERE layer = "
        "getvariable('layer')\n"
    )
    code, out, _ = cli(
        monkeypatch, capsys, "sql", str(f), "--db", str(db), "-p", "layer=2", "-f", "csv"
    )
    assert out == f"n\n{sum(1 for k in ROUTES['r1'] if k[2] == 2)}\n"


def test_list_shows_every_named_query(monkeypatch, capsys):
    from routescope.queries import list_queries

    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = cli(monkeypatch, capsys, "sql", "--list")
    assert code == 0
    queries = list_queries()
    assert len(queries) >= 10
    for q in queries:
        assert q.name in out
        assert q.summary[:30] in out
    assert "run_id: the run (default: the newest run)" in out


def _route_count(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM routes").fetchone()[0]
    finally:
        con.close()


def test_writes_need_write(monkeypatch, capsys, db):
    before = _route_count(db)
    code, out, err = cli(monkeypatch, capsys, "sql", "DELETE FROM routes", "--db", str(db))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: query <inline> would write (DELETE statement)")
    assert "--write" in err
    assert _route_count(db) == before
    code, _, err = cli(
        monkeypatch, capsys, "sql", "DELETE FROM routes WHERE layer = 2", "--db", str(db), "--write"
    )
    assert code == 0, err
    assert _route_count(db) == before - sum(1 for k in ROUTES["r1"] if k[2] == 2)


def test_sql_error_shows_duckdb_message_and_query_name(monkeypatch, capsys, db, tmp_path):
    f = tmp_path / "broken.sql"
    f.write_text("SELECT no_such_column FROM routes")
    code, out, err = cli(monkeypatch, capsys, "sql", str(f), "--db", str(db))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: query broken failed: Binder Error:")
    assert "no_such_column" in err


def test_user_errors_are_one_line(monkeypatch, capsys, db, tmp_path):
    cases = [
        (["sql", "no_such_query", "--db", str(db)], "no named query 'no_such_query'"),
        (["sql", "runs", "--db", str(tmp_path / "none.duckdb")], "no routing store at"),
        (["sql", "runs", "--db", str(db), "-p", "oops"], "write it as name=value"),
        (["sql", "runs", "--db", str(db), "-p", "layer=1"], "query runs has no parameter layer"),
        (["sql", "repetition", "--db", str(db), "-p", "run_id=zz"], "no run 'zz'"),
        (["sql", "runs", "--db", str(tmp_path), "--write"], "--write needs a DuckDB file"),
        (
            ["sql", "runs", "--db", str(db), "-f", "csv", "-o", str(tmp_path / "no" / "x.csv")],
            "cannot write",
        ),
    ]
    for args, needle in cases:
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2, args
        assert err.count("\n") == 1 and needle in err, (args, err)


def test_parquet_directory_as_db(monkeypatch, capsys, db, tmp_path):
    out_dir = tmp_path / "pq"
    out_dir.mkdir()
    con = duckdb.connect(str(db), read_only=True)
    for table in ("runs", "tokens", "routes"):
        parts = "run_id, layer" if table == "routes" else "run_id"
        con.execute(f"COPY {table} TO '{out_dir / table}' (FORMAT parquet, PARTITION_BY ({parts}))")
    con.close()
    code, out, err = cli(
        monkeypatch,
        capsys,
        "sql",
        "expert_load",
        "--db",
        str(out_dir),
        "-p",
        "run_id=r1",
        "-f",
        "json",
    )
    assert code == 0, err
    _check_load(json.loads(out), "r1")
