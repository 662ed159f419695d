"""The physical layout of a run's rows, and converting stores written by earlier versions.

A collection commits whole sequences with all their layers, so `routes` arrives token by token.
Analyses read either one layer at a time or a range of sequences; both are cheap once the run's
rows are clustered by (layer, seq_id, pos): DuckDB keeps min/max statistics per row group, so a
filter on `layer` or on a `seq_id` range skips every row group outside it. `cluster_run` rewrites a
run that way (one transaction: the sorted copy is appended, the old rows deleted), and is called
when a job stops writing to the run. Tokens are clustered by (seq_id, pos) the same way.

`migrate` converts a store of an earlier schema version in place (new run columns, the results
memo under its new name, every run clustered).
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from routescope.core.errors import StoreError
from routescope.store.schema import DDL, SCHEMA_VERSION

#: The layout written by `cluster_run`.
CLUSTERED = "layer-major"

#: table → the order its rows are rewritten in.
_CLUSTER_ORDER = {
    "routes": "layer, seq_id, pos",
    "router_probs": "layer, seq_id, pos",
    "speculative_routes": "layer, distance, seq_id, pos",
    "tokens": "seq_id, pos",
}


def cluster_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Rewrite the run's routes, router_probs and tokens in clustered order (one transaction).

    Rows written after an earlier clustering (a resumed job) are included; a run already
    clustered with nothing new is left alone.
    """
    row = con.execute("SELECT layout FROM runs WHERE run_id = ?", [run_id]).fetchall()
    if not row:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        for table, order in _CLUSTER_ORDER.items():
            top = con.execute(f"SELECT max(rowid) FROM {table}").fetchall()[0][0]
            if top is None:
                continue
            n = con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchall()
            if n[0][0] == 0:
                continue
            con.execute(
                f"INSERT INTO {table} SELECT * FROM {table} WHERE run_id = ? ORDER BY {order}",
                [run_id],
            )
            # rows inserted in this transaction have row ids above every committed one
            con.execute(f"DELETE FROM {table} WHERE run_id = ? AND rowid <= ?", [run_id, int(top)])
        con.execute("UPDATE runs SET layout = ? WHERE run_id = ?", [CLUSTERED, run_id])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The store's schema version (None for a file that is not a routescope store yet)."""
    try:
        rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    except duckdb.Error:
        return None
    return int(rows[0][0]) if rows else None


def _columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}


def migrate(
    con: duckdb.DuckDBPyConnection, path: str, progress: Callable[[str], None] | None = None
) -> bool:
    """Bring a writable store to the current schema; True when something was converted."""
    version = schema_version(con)
    if version is None or version == SCHEMA_VERSION:
        return False
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer routescope (store schema {version}, this one reads "
            f"{SCHEMA_VERSION}); upgrade routescope (pip install -U routescope)"
        )
    runs_cols = _columns(con, "runs")
    for col, ddl in (
        ("source", "VARCHAR DEFAULT 'routescope'"),
        ("has_weights", "BOOLEAN DEFAULT true"),
        ("layout", "VARCHAR"),
    ):
        if col not in runs_cols:
            con.execute(f"ALTER TABLE runs ADD COLUMN {col} {ddl}")
    con.execute("DROP TABLE IF EXISTS analysis_cache")  # a memo: recomputed on demand
    con.execute(DDL)
    for (run_id,) in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall():
        if progress is not None:
            progress(f"clustering run {run_id}")
        cluster_run(con, run_id)
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    con.execute("CHECKPOINT")
    return True


def refuse_old_schema(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """For a read-only open: one line saying how to convert a store of another schema version."""
    version = schema_version(con)
    if version is None or version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} was written by a newer routescope (store schema {version}, this one reads "
            f"{SCHEMA_VERSION}); upgrade routescope"
        )
    raise StoreError(
        f"{path} was written by an earlier routescope (store schema {version}); convert it once "
        f"with `routescope migrate {path}` (it clusters each run's routes by layer, about a "
        "minute per 50 million route rows), then open it again"
    )
