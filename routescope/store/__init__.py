"""The routing store (DESIGN §3): one DuckDB file, or a Parquet export read the same way.

Rooms, one job each: `connect` (opening, locks), `schema` (tables), `layout` (clustering, schema
migration), `writer` (runs and batches: `StoreWriter`, `IntermittentStore`), `reader` (runs,
traces), `source` (`StoreSource`: a run read chunk by chunk), `results` (the memo of analysis
results), `store` (`RoutingStore`, composed of the above), `dataset` (SQL over a file or a Parquet
tree), `parquet` (export), `parts` (a Parquet-parts writer for shards), `merge` (shards into one),
`notes` (expert annotations). Importing this package stays light: names load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_DB",
    "IntermittentStore",
    "RoutingStore",
    "StoreSource",
    "export_parquet",
    "load_trace_parquet",
]

_WHERE = {
    "DEFAULT_DB": "routescope.core.defaults",
    "RoutingStore": "routescope.store.store",
    "IntermittentStore": "routescope.store.writer",
    "StoreSource": "routescope.store.source",
    "export_parquet": "routescope.store.parquet",
    "load_trace_parquet": "routescope.store.parquet",
}


def __getattr__(name: str) -> Any:  # lazy: `import routescope.store` does not load duckdb
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'routescope.store' has no attribute {name!r}")
