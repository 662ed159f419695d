"""The routing store: DuckDB schema, writer, readers (`Trace`), Parquet export."""

from routescope.core.trace import Trace

__all__ = ["DEFAULT_DB", "RoutingStore", "Trace", "export_parquet", "load_trace_parquet"]


def __getattr__(name: str):  # lazy: `from routescope.store import Trace` stays light (no duckdb)
    if name in ("RoutingStore", "DEFAULT_DB", "canonical_json"):
        from routescope.store import store

        return getattr(store, name)
    if name in ("export_parquet", "load_trace_parquet"):
        from routescope.store import parquet

        return getattr(parquet, name)
    raise AttributeError(f"module 'routescope.store' has no attribute {name!r}")
