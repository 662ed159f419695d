"""Open a routing store for SQL: a DuckDB file, or a Parquet export directory seen as the same tables.

`connect_store(path)` gives a DuckDB connection on which the schema's table names (runs, sequences,
tokens, routes, router_probs, …) and the `route_choices` view resolve, whichever form the store has,
so every named query in queries/ runs unchanged on both. Readers of a DuckDB file retry for a short
while when a collection job holds the file's write lock (DuckDB lets one process open a file for
writing and no one else open it meanwhile; the runner holds it only while committing a batch).
"""

from __future__ import annotations

import functools
import re
import shutil
import tempfile
from pathlib import Path

import duckdb

from routescope.core.errors import StoreError
from routescope.store.connect import READER_LOCK_TIMEOUT, connect_retrying, first_line
from routescope.store.schema import DDL

#: How long a reader keeps retrying a locked DuckDB file before giving up, in seconds.
DEFAULT_LOCK_TIMEOUT = READER_LOCK_TIMEOUT

_VIEW_RE = re.compile(r"CREATE OR REPLACE VIEW .*?;", re.S)


@functools.cache
def schema_columns() -> dict[str, list[tuple[str, str]]]:
    """table → [(column, type)] of the schema's base tables, read by running the DDL in memory."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(DDL)
        rows = con.execute(
            "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_name) "
            "WHERE t.table_type = 'BASE TABLE' ORDER BY c.table_name, c.ordinal_position"
        ).fetchall()
    finally:
        con.close()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, col, ctype in rows:
        tables.setdefault(table, []).append((col, ctype))
    return tables


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect_store(
    path: str | Path,
    read_only: bool = True,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection exposing the store's tables, from a DuckDB file or a Parquet directory.

    A directory is read as a `routescope export` tree (DIR/<table>/…/*.parquet, hive partitions)
    into views in an in-memory database; a file is opened directly, `read_only` by default, retrying
    up to `lock_timeout` seconds while another process holds its write lock.
    """
    p = Path(path)
    if p.is_dir():
        return _connect_parquet(p)
    if not p.exists():
        raise StoreError(
            f"no routing store at {p}; collect a run first (`routescope collect JOB.toml`) "
            "or pass --db with a DuckDB file or a Parquet export directory"
        )
    return connect_retrying(p, read_only, lock_timeout)


def _parquet_source(root: Path, table: str) -> str | None:
    """The read_parquet() argument for `table` in the export tree, or None if it is absent."""
    sub = root / table
    if sub.is_dir() and any(sub.rglob("*.parquet")):
        return _sql_str(str(sub / "**" / "*.parquet"))
    single = root / f"{table}.parquet"
    if single.is_file():
        return _sql_str(str(single))
    return None


def _connect_parquet(root: Path) -> duckdb.DuckDBPyConnection:
    """A read-only DuckDB connection whose schema tables are typed views over `root`'s Parquet files.

    The views are written to a throwaway catalog file that is then opened read-only, so DuckDB
    itself refuses writes, exactly as on a read-only store file (a query cannot pretend to change
    an export). Tables with no files under root stay as empty tables of the schema, so every
    query still binds. Hive partition columns arrive as strings and are cast to the schema's types,
    as are file columns (JSON stored as text, for instance); extra columns in the files pass through.
    """
    tmp = Path(tempfile.mkdtemp(prefix="routescope-parquet-"))
    catalog = tmp / "views.duckdb"
    try:
        con = duckdb.connect(str(catalog))
        try:
            _create_parquet_views(con, root)
        finally:
            con.close()
        return duckdb.connect(str(catalog), read_only=True)
    finally:  # the open connection holds the catalog in memory: the file is no longer needed
        shutil.rmtree(tmp, ignore_errors=True)


def _create_parquet_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Create the schema's tables on `con` as views over the Parquet files under `root`."""
    con.execute(_VIEW_RE.sub("", DDL))
    found = 0
    try:
        for table, cols in schema_columns().items():
            source = _parquet_source(root, table)
            if source is None:
                continue
            found += 1
            scan = (
                f"read_parquet({source}, hive_partitioning = true, union_by_name = true, "
                "hive_types_autocast = false)"
            )
            present = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()]
            schema_names = {c for c, _ in cols}
            select = [
                f"CAST({_ident(c)} AS {t}) AS {_ident(c)}"
                if c in present
                else f"CAST(NULL AS {t}) AS {_ident(c)}"
                for c, t in cols
            ]
            select += [_ident(c) for c in present if c not in schema_names]
            con.execute(f"DROP TABLE {table}")
            con.execute(f"CREATE VIEW {table} AS SELECT {', '.join(select)} FROM {scan}")
    except duckdb.Error as exc:
        raise StoreError(f"cannot read the Parquet export {root}: {first_line(str(exc))}") from None
    if found == 0:
        raise StoreError(
            f"{root} is a directory but not a routescope Parquet export (no runs/, routes/, … "
            "subdirectories with .parquet files); create one with `routescope export RUN --parquet DIR`"
        )
    for view in _VIEW_RE.findall(DDL):
        con.execute(view)
