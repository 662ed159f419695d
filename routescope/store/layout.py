"""The physical layout of a run's rows, the store file's size, and converting older stores.

A collection commits whole sequences with all their layers, so `routes` arrives token by token.
Analyses read either one layer at a time or a range of sequences; both are cheap once the run's
rows are clustered by (layer, seq_id, pos): DuckDB keeps min/max statistics per row group, so a
filter on `layer` or on a `seq_id` range skips every row group outside it. Tokens are clustered by
(seq_id, pos) the same way. `finish_runs` does it when a job stops writing to a run.

Rewriting rows leaves their old blocks free, and DuckDB never shrinks a file: clustering a run in
place (`cluster_run`: the sorted copy appended, the old rows deleted, one transaction) leaves the
file about twice its data. So when clustering in place would leave much free space (the run is a
large share of the store, or the file has much free space already), `compact` instead writes a
compacted copy of the whole database next to the file (the runs being finished in clustered
order, every other row as it is), swaps it in with `os.replace`, and re-attaches it under the same
name on the same connection, so the caller's connection keeps working. A failure before the swap
leaves the original untouched and the copy removed; a crash's leftover copy is removed by a later
writable open. A reader that had the old file open keeps reading it consistently; readers opening
afterwards see the new one.

`migrate` converts a store of an earlier schema version in place (new run columns, the results
memo under its new name, every run clustered, the file compacted once).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence

import duckdb

from routescope.core.errors import StoreError
from routescope.store.connect import while_locked
from routescope.store.schema import DDL, SCHEMA_VERSION

#: The layout written by `cluster_run` and `compact`.
CLUSTERED = "layer-major"

#: table → the order its rows are rewritten in.
_CLUSTER_ORDER = {
    "routes": "layer, seq_id, pos",
    "router_probs": "layer, seq_id, pos",
    "speculative_routes": "layer, distance, seq_id, pos",
    "tokens": "seq_id, pos",
}

#: Compact instead of clustering in place when the free space left would exceed this share of
#: the data (DuckDB reuses free blocks for later writes, so a small slack is harmless).
COMPACT_SLACK = 0.25

#: The compacted copy is written as `<db>.compact-<pid>.tmp` (its WAL `….tmp.wal`).
_TMP_INFIX = ".compact-"
_TMP_SUFFIXES = (".tmp", ".tmp.wal")

#: A copy older than this is a crashed compaction's leftover (a live one is seconds old when it
#: is swapped in).
LEFTOVER_AGE_S = 600.0

#: Seconds to wait to re-attach the compacted file while another process holds it.
REATTACH_TIMEOUT = 300.0


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def cluster_run(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Rewrite the run's routes, router_probs and tokens in clustered order, in place (one
    transaction; the file keeps the old rows' blocks as free space).

    Rows written after an earlier clustering (a resumed job) are included; a run already
    clustered with nothing new is left alone.
    """
    row = con.execute("SELECT layout FROM runs WHERE run_id = ?", [run_id]).fetchall()
    if not row or row[0][0] == CLUSTERED:
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


def database_file(con: duckdb.DuckDBPyConnection) -> str | None:
    """The file of the connection's current database (None in memory)."""
    rows = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()
    path = rows[0][0] if rows else None
    return str(path) if path and path != ":memory:" else None


def _unclustered(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> list[str]:
    rows = con.execute(
        "SELECT run_id FROM runs WHERE list_contains(?, run_id) "
        "AND layout IS DISTINCT FROM ? ORDER BY run_id",
        [list(run_ids), CLUSTERED],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _worth_compacting(con: duckdb.DuckDBPyConnection, run_ids: Sequence[str]) -> bool:
    """Would clustering the runs in place leave more free space than COMPACT_SLACK of the data?

    In place, the sorted copy first fills free blocks and the old rows' blocks are freed, so about
    max(free now, the runs' bytes) stays free; the runs' bytes are estimated by their share of
    the clustered tables' rows (routes dominate the file). Checkpoints first: rows still in the
    WAL have no blocks yet.
    """
    con.execute("CHECKPOINT")
    used, free = con.execute(
        "SELECT used_blocks, free_blocks FROM pragma_database_size() "
        "WHERE database_name = current_database()"
    ).fetchall()[0]
    mine = total = 0
    for table in _CLUSTER_ORDER:
        n_mine, n_all = con.execute(
            f"SELECT count(*) FILTER (WHERE list_contains(?, run_id)), count(*) FROM {table}",
            [list(run_ids)],
        ).fetchall()[0]
        mine, total = mine + n_mine, total + n_all
    share = mine / total if total else 0.0
    return max(float(free), share * used) > COMPACT_SLACK * max(int(used), 1)


def finish_runs(
    con: duckdb.DuckDBPyConnection,
    run_ids: Sequence[str],
    progress: Callable[[str], None] | None = None,
) -> None:
    """Cluster the runs' rows for reading (runs already clustered are left alone).

    On a file store where clustering in place would leave much free space, through `compact`, so
    the file holds its data about once; in memory (or when the connection cannot let go of its
    file), in place.
    """
    todo = _unclustered(con, run_ids)
    if not todo:
        return
    if (
        database_file(con) is not None
        and _worth_compacting(con, todo)
        and compact(con, cluster=todo, progress=progress)
    ):
        return
    for run_id in todo:
        if progress is not None:
            progress(f"clustering run {run_id}")
        cluster_run(con, run_id)


def remove_leftovers(path: str, max_age: float = LEFTOVER_AGE_S) -> None:
    """Remove compacted copies of the store at `path` that a crashed compaction left (older than
    max_age seconds; a live compaction's copy is younger)."""
    folder, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(folder)
    except OSError:
        return
    now = time.time()
    for name in names:
        if not (name.startswith(base + _TMP_INFIX) and name.endswith(_TMP_SUFFIXES)):
            continue
        full = os.path.join(folder, name)
        with contextlib.suppress(OSError):
            if now - os.path.getmtime(full) >= max_age:
                os.unlink(full)


def _in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.TransactionException:
        return True
    con.execute("ROLLBACK")
    return False


def _remove_copy(tmp: str) -> None:
    for p in (tmp, tmp + ".wal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _write_copy(
    con: duckdb.DuckDBPyConnection,
    src: str,
    dst: str,
    cluster: Sequence[str],
    progress: Callable[[str], None] | None,
) -> None:
    """Copy database `src` into the attached empty database `dst`: the same schema (COPY FROM
    DATABASE … (SCHEMA): tables with their keys and defaults, views), every table's rows in their
    physical order, except the `cluster` runs' rows of the clustered tables, appended in
    clustered order; those runs marked clustered."""
    s, d = _ident(src), _ident(dst)
    con.execute(f"COPY FROM DATABASE {s} TO {d} (SCHEMA)")
    tables = con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? "
        "ORDER BY schema_name, table_name",
        [src],
    ).fetchall()
    runs = list(cluster)
    for schema, table in tables:
        if progress is not None:
            progress(f"compacting: {table}")
        qual = f"{_ident(schema)}.{_ident(table)}"
        order = _CLUSTER_ORDER.get(table) if schema == "main" else None
        if order is None:
            con.execute(f"INSERT INTO {d}.{qual} SELECT * FROM {s}.{qual}")
            continue
        # preserve_insertion_order (DuckDB's default) keeps a scan's order and ORDER BY's order
        con.execute(
            f"INSERT INTO {d}.{qual} SELECT * FROM {s}.{qual} "
            "WHERE run_id IS NULL OR NOT list_contains(?, run_id)",
            [runs],
        )
        for run_id in runs:
            con.execute(
                f"INSERT INTO {d}.{qual} SELECT * FROM {s}.{qual} WHERE run_id = ? "
                f"ORDER BY {order}",
                [run_id],
            )
    con.execute(
        f"UPDATE {d}.main.runs SET layout = ? WHERE list_contains(?, run_id)", [CLUSTERED, runs]
    )
    con.execute(f"CHECKPOINT {d}")


def compact(
    con: duckdb.DuckDBPyConnection,
    cluster: Sequence[str] = (),
    progress: Callable[[str], None] | None = None,
) -> bool:
    """Rewrite the connection's store file as a compact copy and swap it in; `con` keeps working.

    The copy (`<db>.compact-<pid>.tmp`, attached to `con`) holds every table with the `cluster`
    runs' rows in clustered order and those runs marked clustered. Then the original is
    checkpointed and detached, the copy `os.replace`s it and is attached under the original's
    name as the current database. Before the replace, any failure leaves the original as it was
    (re-attached) and the copy removed. False, with nothing done, for an in-memory store or a
    connection inside a transaction.
    """
    path = database_file(con)
    if path is None or _in_transaction(con):
        return False
    name = str(con.execute("SELECT current_database()").fetchall()[0][0])
    remove_leftovers(path)
    tmp = f"{path}{_TMP_INFIX}{os.getpid()}.tmp"
    _remove_copy(tmp)
    copy_name, swap_name = "rs_compact_copy", "rs_compact_swap"
    con.execute(f"ATTACH {_sql_str(tmp)} AS {copy_name}")
    try:
        try:
            _write_copy(con, name, copy_name, cluster, progress)
        finally:
            con.execute(f"DETACH {copy_name}")
        con.execute("CHECKPOINT")
        con.execute(f"ATTACH ':memory:' AS {swap_name}")
    except BaseException:
        _remove_copy(tmp)
        raise
    try:
        con.execute(f"USE {swap_name}")
        con.execute(f"DETACH {_ident(name)}")  # closes the original and releases its lock
    except duckdb.Error:  # e.g. another connection's transaction: cluster in place instead
        con.execute(f"USE {_ident(name)}")
        con.execute(f"DETACH {swap_name}")
        _remove_copy(tmp)
        return False
    replaced = False
    try:
        if os.path.exists(path + ".wal"):
            raise StoreError(f"{path}.wal is still there after a checkpoint; not compacting")
        if progress is not None:
            progress("compacting: replacing the file")
        os.replace(tmp, path)
        replaced = True
    finally:
        if not replaced:
            _remove_copy(tmp)
        try:
            # another process may have opened the new file meanwhile: wait for it
            while_locked(
                lambda: con.execute(f"ATTACH {_sql_str(path)} AS {_ident(name)}"), REATTACH_TIMEOUT
            )
        except duckdb.Error as exc:
            raise StoreError(
                f"{path} could not be opened again after compacting it: "
                f"{str(exc).splitlines()[0]}; open the store again"
            ) from None
        con.execute(f"USE {_ident(name)}")
        con.execute(f"DETACH {swap_name}")
    return True


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
    """Bring a writable store to the current schema; True when something was converted.

    Also removes a crashed compaction's leftover copy of the file (every writable open calls it).
    """
    file = database_file(con)
    if file is not None:
        remove_leftovers(file)
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
    run_ids = [str(r[0]) for r in con.execute("SELECT run_id FROM runs").fetchall()]
    finish_runs(con, run_ids, progress)  # every run clustered; a file compacted once
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
