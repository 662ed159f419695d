"""The routing store: DuckDB schema, writer, readers (`Trace`), Parquet export."""

from routescope.store.trace import Trace

__all__ = ["Trace"]
