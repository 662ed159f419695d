"""A writable store whose commits are Parquet files: what a shard writes to a shared filesystem.

`ParquetPartsStore(DIR)` is a `RunWriter` with the hive layout of `routescope export`
(DIR/<table>/run_id=…[/layer=…]/<part>.parquet). Each committed group of sequences becomes one
file per table partition named by a fresh part token; the sequences file is written last (by
rename), so a part without one is an unfinished write and is deleted when the directory is opened
again. `connect_store(DIR)` and `RoutingStore(DIR, read_only=True)` read it back; `routescope
merge` brings it into a DuckDB file.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

import duckdb
import numpy as np

from routescope.core.protocols import RunFields
from routescope.core.records import BatchRouting
from routescope.store.connect import CollectionLock
from routescope.store.writer import RUN_TABLES

_KEYS = {
    "sequences": "seq_id",
    "tokens": "seq_id, pos",
    "routes": "layer, seq_id, pos",
    "router_probs": "layer, seq_id, pos",
    "speculative_routes": "layer, distance, seq_id, pos",
}


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ParquetPartsStore:
    """A writable store whose commits are Parquet files under a directory (hive layout of export).

    Each committed group of sequences becomes one file per table partition named by a fresh part
    token; the sequences file is written last (by rename), so a part without one is an unfinished
    write: it is deleted when the directory is opened again. `connect_store(DIR)` reads it back.
    Batches are converted by an in-memory `RoutingStore`, the same code as DuckDB writes.
    """

    def __init__(self, directory: str | Path) -> None:
        from routescope.store.store import RoutingStore

        self.root = Path(directory)
        self.path = str(self.root)
        self.read_only = False
        self.root.mkdir(parents=True, exist_ok=True)
        # one writer per directory: another's unfinished part must not look abandoned
        self._lock = CollectionLock(self.root / ".collect-lock", self.path)
        self._remove_unfinished()
        self.mem = RoutingStore(":memory:")
        self.con = self.mem.con
        for table in ("runs", "meta"):
            files = sorted(self.root.glob(f"{table}/**/*.parquet")) + sorted(
                self.root.glob(f"{table}.parquet")
            )
            if files:
                cols = [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall()]
                src = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
                scan = f"read_parquet({src}, hive_partitioning = true, union_by_name = true)"
                present = {
                    r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
                }
                use = [c for c in cols if c in present]
                self.con.execute(
                    f"INSERT OR REPLACE INTO {table} ({', '.join(use)}) "
                    f"SELECT {', '.join(use)} FROM {scan}"
                )

    def _remove_unfinished(self) -> None:
        done = {f.stem for f in self.root.glob("sequences/**/*.parquet")}
        for table in RUN_TABLES[1:]:
            for f in self.root.glob(f"{table}/**/*.parquet"):
                if f.stem.split("_")[0] not in done:
                    f.unlink()
        for f in self.root.glob("sequences/**/*.tmp"):
            f.unlink()

    def finish_run(self, run_id: str) -> None:
        """Parts are clustered as written (a directory per layer, each part sorted by sequence)."""
        from routescope.store.layout import CLUSTERED

        self.con.execute("UPDATE runs SET layout = ? WHERE run_id = ?", [CLUSTERED, run_id])
        self._write_small(run_id)

    def close(self) -> None:
        self.mem.close()
        self._lock.release()

    def __enter__(self) -> ParquetPartsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_small(self, run_id: str | None = None) -> None:
        """Rewrite the runs row(s) and meta as files (tiny; done when they change)."""
        runs = (
            [run_id]
            if run_id
            else [r[0] for r in self.con.execute("SELECT run_id FROM runs").fetchall()]
        )
        for rid in runs:
            d = self.root / "runs" / f"run_id={rid}"
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / "run.parquet.tmp"
            self.con.execute(
                f"COPY (SELECT * EXCLUDE (run_id) FROM runs WHERE run_id = ?) TO {_sql_str(str(tmp))} "
                "(FORMAT parquet)",
                [rid],
            )
            os.replace(tmp, d / "run.parquet")
        tmp = self.root / "meta.parquet.tmp"
        self.con.execute(f"COPY meta TO {_sql_str(str(tmp))} (FORMAT parquet)")
        os.replace(tmp, self.root / "meta.parquet")

    def create_or_resume_run(self, run_id: str, **kwargs: Unpack[RunFields]) -> bool:
        existed = self.mem.create_or_resume_run(run_id, **kwargs)
        self._write_small(run_id)
        return existed

    def set_status(self, run_id: str, status: str) -> None:
        self.mem.set_status(run_id, status)
        self._write_small(run_id)

    def set_meta(self, key: str, value: Any) -> None:
        self.mem.set_meta(key, value)
        self._write_small()

    def stored_seq_ids(self, run_id: str) -> set[int]:
        files = list((self.root / "sequences" / f"run_id={run_id}").glob("*.parquet"))
        if not files:
            return set()
        src = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
        rows = duckdb.execute(f"SELECT seq_id FROM read_parquet({src})").fetchall()
        return {int(r[0]) for r in rows}

    def write_batch(
        self,
        run_id: str,
        seqs_meta: Sequence[Mapping[str, Any]],
        batch: BatchRouting,
        token_texts: Mapping[int, str] | Sequence[str | None] | None = None,
        in_target: np.ndarray | None = None,
    ) -> int:
        """Convert with the in-memory store, then write one file per partition of each table."""
        con = self.con
        for table in RUN_TABLES:
            con.execute(f"DELETE FROM {table}")
        rows = self.mem.write_batch(run_id, seqs_meta, batch, token_texts, in_target)
        token = uuid.uuid4().hex
        for table in ("speculative_routes", "router_probs", "routes", "tokens"):
            if con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 0:
                continue
            parts = "run_id" if table == "tokens" else "run_id, layer"
            con.execute(
                f"COPY (SELECT * FROM {table} ORDER BY {_KEYS[table]}) TO "
                f"{_sql_str(str(self.root / table))} (FORMAT parquet, PARTITION_BY ({parts}), "
                f"FILENAME_PATTERN '{token}_{{i}}', OVERWRITE_OR_IGNORE)"
            )
        d = self.root / "sequences" / f"run_id={run_id}"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{token}.tmp"
        con.execute(
            f"COPY (SELECT * EXCLUDE (run_id) FROM sequences ORDER BY seq_id) TO "
            f"{_sql_str(str(tmp))} (FORMAT parquet)"
        )
        os.replace(tmp, d / f"{token}.parquet")  # the commit
        for table in RUN_TABLES:
            con.execute(f"DELETE FROM {table}")
        return rows
