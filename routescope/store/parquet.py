"""Parquet export of a run and reading it back as a `Trace` (DESIGN.md §3).

Layout under DIR (hive partitions, readable by DuckDB, polars, Spark):
    DIR/routes/run_id=<id>/layer=<l>/*.parquet
    DIR/router_probs/run_id=<id>/layer=<l>/*.parquet   (only when the run saved probabilities)
    DIR/tokens/run_id=<id>/*.parquet
    DIR/sequences/run_id=<id>/*.parquet
    DIR/runs/run_id=<id>/*.parquet
Several runs can be exported into one DIR; exporting a run again replaces its partitions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from routescope.core.errors import StoreError
from routescope.core.trace import Trace
from routescope.store.store import RoutingStore

#: table → hive partition columns.
PARTITIONS: dict[str, tuple[str, ...]] = {
    "runs": ("run_id",),
    "sequences": ("run_id",),
    "tokens": ("run_id",),
    "routes": ("run_id", "layer"),
    "router_probs": ("run_id", "layer"),
    "speculative_routes": ("run_id", "layer"),
}
_ORDER = {
    "runs": "run_id",
    "sequences": "seq_id",
    "tokens": "seq_id, pos",
    "routes": "layer, seq_id, pos",
    "router_probs": "layer, seq_id, pos",
    "speculative_routes": "layer, distance, seq_id, pos",
}
_HIVE_TYPES = {"run_id": "VARCHAR", "layer": "SMALLINT"}


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def export_parquet(store: RoutingStore, run: str | None, directory: str | Path) -> dict[str, int]:
    """Write the run's tables as hive-partitioned Parquet under `directory`; returns row counts."""
    run_id = store.resolve_run(run)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for table, parts in PARTITIONS.items():
        n = store.con.execute(
            f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]
        ).fetchall()[0][0]
        target = root / table
        old = target / f"run_id={run_id}"
        if old.exists():
            shutil.rmtree(old)
        counts[table] = int(n)
        if n == 0 and table in ("router_probs", "speculative_routes"):
            continue
        target.mkdir(parents=True, exist_ok=True)
        order = _ORDER[table]
        store.con.execute(
            f"COPY (SELECT * FROM {table} WHERE run_id = {_sql_str(run_id)} ORDER BY {order}) "
            f"TO {_sql_str(str(target))} (FORMAT parquet, PARTITION_BY ({', '.join(parts)}), "
            "OVERWRITE_OR_IGNORE)"
        )
    return counts


def open_parquet_store(directory: str | Path) -> RoutingStore:
    """A read-only `RoutingStore` over an export directory (views built by `connect_store`)."""
    root = Path(directory)
    if not (root / "routes").is_dir() or not (root / "runs").is_dir():
        raise StoreError(
            f"{root} is not a routescope Parquet export (no routes/ and runs/ inside); "
            "create one with `routescope export RUN --parquet DIR`"
        )
    return RoutingStore(str(root), read_only=True)


def load_trace_parquet(
    directory: str | Path,
    run: str | None = None,
    phase: str = "all",
    labels: list[str] | None = None,
    layers: list[int] | None = None,
) -> Trace:
    """`RoutingStore.load_trace` over a Parquet export instead of the DuckDB file."""
    store = open_parquet_store(directory)
    try:
        return store.load_trace(run, phase=phase, labels=labels, layers=layers)
    finally:
        store.close()
