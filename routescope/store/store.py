"""`RoutingStore`: the DuckDB file (or Parquet export) that holds every run's routing (DESIGN §3).

One object per open store, composed of rooms that each do one job: `StoreReader` (runs, sources,
traces), `StoreWriter` (runs and batches; a `RunWriter`), `ResultsMemo` (remembered analysis
results). Opening is here: a writable open creates the schema or converts an older one
(`routescope.store.layout.migrate`); a read-only open of an older store says how to convert it.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from routescope.core.defaults import DEFAULT_DB
from routescope.core.errors import StoreError
from routescope.store.connect import READER_LOCK_TIMEOUT, connect_retrying
from routescope.store.layout import migrate, refuse_old_schema
from routescope.store.reader import StoreReader
from routescope.store.results import ResultsMemo
from routescope.store.schema import DDL, SCHEMA_VERSION
from routescope.store.writer import StoreWriter

__all__ = ["DEFAULT_DB", "RoutingStore"]


class RoutingStore(StoreReader, StoreWriter, ResultsMemo):
    """A routing database: runs, sequences, tokens, routes (+ router_probs, presets, notes, results).

    `RoutingStore(path)` opens (creating if needed) for writing; `read_only=True` for readers; a
    directory is read as a `routescope export` Parquet tree (read-only). A context manager;
    `close()` releases the file lock.
    """

    def __init__(
        self,
        path: str | Path = DEFAULT_DB,
        read_only: bool = False,
        *,
        connection: duckdb.DuckDBPyConnection | None = None,
        lock_timeout: float = 0.0,
    ) -> None:
        self.path = str(path)
        self.read_only = read_only
        self._reopenable = False  # a read-only DuckDB file this object opened itself
        self._moe_layers: dict[str, list[int]] = {}
        if connection is not None:  # e.g. an in-memory connection with views over Parquet
            self.con = connection
            return
        if Path(self.path).is_dir():  # a `routescope export` tree: views over its Parquet files
            if not read_only:
                raise StoreError(
                    f"{self.path} is a Parquet export directory, which is read-only; "
                    "write to a DuckDB file instead (--db FILE.duckdb)"
                )
            from routescope.store.dataset import connect_store

            self.con = connect_store(self.path)
            return
        if read_only and lock_timeout == 0.0:
            lock_timeout = READER_LOCK_TIMEOUT  # readers wait for a job to finish its commit
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            raise StoreError(
                f"no routing database at {self.path}; run `routescope collect` first or pass --db"
            )
        self.con = connect_retrying(self.path, read_only, lock_timeout)
        self._reopenable = read_only and self.path != ":memory:"
        try:
            if read_only:
                refuse_old_schema(self.con, self.path)
            else:
                migrate(self.con, self.path)
                self.con.execute(DDL)
                self.con.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    [str(SCHEMA_VERSION)],
                )
        except BaseException:
            self.con.close()
            raise

    def close(self) -> None:
        """Close the connection (and release the file lock)."""
        self.con.close()

    def __enter__(self) -> RoutingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
