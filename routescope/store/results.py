"""The memo of analysis results: each result stored once per (run, analysis, parameters).

An analysis over a large run takes seconds to minutes; its result is small. `ResultsMemo` keeps
results in the store's `analysis_results` table as Arrow IPC bytes, keyed by the run, the analysis
and its canonical parameters, so the CLI and the dashboard compute each one once and share it.
Writing to a run deletes its results, so a resumed run never serves stale ones. A read-only store
saves a result too, taking the write lock just long enough (skipped while a job holds it).
"""

from __future__ import annotations

import hashlib
import inspect
import io
from collections.abc import Callable, Mapping
from typing import Any

import duckdb
import polars as pl

from routescope.core.canonical import canonical_json
from routescope.store.connect import READER_LOCK_TIMEOUT, connect_retrying

#: Arguments of an analysis that do not change its result (left out of keys).
NOT_PARAMETERS = frozenset({"progress", "max_rows", "executor"})

_INSERT = (
    "INSERT OR REPLACE INTO analysis_results (run_id, kind, params_key, params, result) "
    "VALUES (?, ?, ?, ?, ?)"
)


def analysis_params(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """fn's full arguments after the data argument (defaults filled in), as a key's parameters."""
    bound = inspect.signature(fn).bind_partial(None, **kwargs)
    bound.apply_defaults()
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in list(bound.arguments.items())[1:]
        if k not in NOT_PARAMETERS
    }


def memo_kind(fn: Callable[..., Any]) -> str:
    """The memo's name for an analysis: its qualified name, plus its `__memo_version__` when the
    function sets one (bumped when its results change, so older stored results are not served)."""
    kind = f"{fn.__module__}.{fn.__qualname__}"
    version = getattr(fn, "__memo_version__", None)
    return kind if version is None else f"{kind}@v{version}"


class ResultsMemo:
    """The memo methods of `RoutingStore` (they need `con`, `path`, `read_only`)."""

    con: duckdb.DuckDBPyConnection
    path: str
    read_only: bool
    _reopenable: bool

    def _one(self, sql: str, params: Any = None) -> tuple | None:  # provided by the reader
        raise NotImplementedError

    def memo_result(
        self,
        run_id: str,
        kind: str,
        params: Mapping[str, Any],
        compute: Callable[[], pl.DataFrame],
    ) -> pl.DataFrame:
        """`compute()`'s frame, remembered per (run, kind, canonical params).

        A stored result is returned as it is; otherwise it is computed and (where the store can
        be written) saved.
        """
        params_json = canonical_json(dict(params))
        key = hashlib.sha256(params_json.encode()).hexdigest()
        try:
            row = self._one(
                "SELECT result FROM analysis_results "
                "WHERE run_id = ? AND kind = ? AND params_key = ?",
                [run_id, kind, key],
            )
        except duckdb.CatalogException:  # a Parquet export holds no results
            row = None
        if row is not None:
            return pl.read_ipc(io.BytesIO(row[0]))
        result = compute()
        if not isinstance(result, pl.DataFrame):
            raise TypeError(f"memo_result compute() must return a polars DataFrame, got {result!r}")
        buf = io.BytesIO()
        result.write_ipc(buf)
        entry = [run_id, kind, key, params_json, buf.getvalue()]
        if not self.read_only:
            self.con.execute(_INSERT, entry)
        elif self._reopenable:
            self._save_briefly(entry)
        return result

    def memo_analysis(
        self,
        run_id: str,
        fn: Callable[..., pl.DataFrame],
        data: Callable[[], Any],
        *,
        selection: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> pl.DataFrame:
        """`fn(data(), **kwargs)` through `memo_result`, keyed by fn's qualified name and its full
        arguments, so the CLI and the dashboard share results.

        `data` (a Trace or a TraceSource, made lazily) is called only when nothing is stored.
        When it narrows the run in a way fn's arguments do not say (e.g. a phase for functions
        without a phase argument), name that in `selection`: it becomes part of the key.
        """
        params = analysis_params(fn, kwargs)
        if selection:
            params["_selection"] = dict(selection)
        kind = memo_kind(fn)
        return self.memo_result(run_id, kind, params, lambda: fn(data(), **kwargs))

    def _save_briefly(self, entry: list[Any]) -> None:
        """From a read-only store: reopen for writing just long enough to save a result, then
        read-only again; skipped when a collection job holds the file."""
        self.con.close()
        try:
            con = duckdb.connect(self.path)
        except duckdb.Error:
            con = None  # a job is committing: keep the result, save it next time
        if con is not None:
            try:
                con.execute(_INSERT, entry)
            finally:
                con.close()
        self.con = connect_retrying(self.path, True, READER_LOCK_TIMEOUT)
