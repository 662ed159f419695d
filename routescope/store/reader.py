"""Reading a store: its runs, one run as a `StoreSource` (chunks) or a whole `Trace`, one sequence.

`StoreReader` is the mixin `RoutingStore` reads with (it needs `self.con` and `self.path`). Every
reader goes through `StoreSource`, so a whole-run `Trace`, a streamed chunk and the dashboard's one
sequence come out of the same code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from routescope.core.errors import InvalidParameterError, StoreError
from routescope.core.trace import Trace
from routescope.store.source import StoreSource


class StoreReader:
    """The reading methods of `RoutingStore`."""

    con: duckdb.DuckDBPyConnection
    path: str
    _moe_layers: dict[str, list[int]]

    def _one(self, sql: str, params: Any = None) -> tuple | None:
        """First row of a query, or None (the result is drained: duckdb 2 refuses new work
        on a connection with an unfinished result)."""
        rows = self.con.execute(sql, params).fetchall()
        return rows[0] if rows else None

    def _arrow(self, sql: str, params: Any = None) -> pa.Table:
        """A query's result as an Arrow table."""
        return self.con.sql(sql, params=params).to_arrow_table()

    def table(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> pl.DataFrame:
        """Run a read query and return a polars frame (for CLI/app listings)."""
        return pl.from_arrow(self._arrow(sql, params))  # type: ignore[return-value]

    # ---- runs -------------------------------------------------------------------------------
    def runs(self) -> pl.DataFrame:
        """One row per run, newest first, with token/sequence counts and the labels it holds."""
        q = """
        WITH s AS (
            SELECT run_id, count(*) AS sequences, sum(num_tokens) AS prompt_tokens,
                   list_sort(list_distinct(list(label))) AS labels
            FROM sequences GROUP BY run_id),
        t AS (SELECT run_id, count(*) AS tokens FROM tokens GROUP BY run_id)
        SELECT r.run_id, r.name, r.model_id, r.family, r.num_layers, r.moe_layers, r.num_experts,
               r.top_k, coalesce(t.tokens, 0) AS tokens, coalesce(s.sequences, 0) AS sequences,
               coalesce(s.labels, []) AS labels, r.status, r.steering_id, r.created_at,
               coalesce(r.source, 'routescope') AS source, coalesce(r.has_weights, true) AS has_weights
        FROM runs r LEFT JOIN s USING (run_id) LEFT JOIN t USING (run_id)
        ORDER BY r.created_at DESC, r.run_id
        """
        return pl.from_arrow(self._arrow(q))  # type: ignore[return-value]

    def _run_list_hint(self) -> str:
        rows = self.con.execute(
            "SELECT run_id, name FROM runs ORDER BY created_at DESC LIMIT 20"
        ).fetchall()
        if not rows:
            return "the database holds no runs yet; run `routescope collect` first"
        names = ", ".join(
            rid if rid == name or not name else f"{rid} ({name})" for rid, name in rows
        )
        return f"runs are: {names}"

    def resolve_run(self, run: str | None = None) -> str:
        """A run id from a run id or name; None or 'latest' means the newest run."""
        if run is None or run == "latest":
            row = self._one("SELECT run_id FROM runs ORDER BY created_at DESC, run_id LIMIT 1")
            if row is None:
                raise StoreError(
                    f"no runs in {self.path}; run `routescope collect` first to record one"
                )
            return str(row[0])
        row = self._one("SELECT run_id FROM runs WHERE run_id = ?", [run])
        if row is None:
            row = self._one(
                "SELECT run_id FROM runs WHERE name = ? ORDER BY created_at DESC LIMIT 1", [run]
            )
        if row is None:
            raise StoreError(f"no run {run!r} in {self.path}; {self._run_list_hint()}")
        return str(row[0])

    def run_info(self, run: str | None = None) -> dict[str, Any]:
        """All columns of the run's `runs` row (config/versions parsed) plus counts and labels."""
        run_id = self.resolve_run(run)
        cur = self.con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
        cols = [d[0] for d in cur.description]
        info = dict(zip(cols, cur.fetchall()[0], strict=True))
        for key in ("config", "versions"):
            if isinstance(info.get(key), str):
                info[key] = json.loads(info[key])
        counts = self._one(
            "SELECT count(*), coalesce(sum(num_tokens), 0), "
            "list_sort(list_distinct(list(label))) FROM sequences WHERE run_id = ?",
            [run_id],
        )
        assert counts is not None
        info["sequences"] = int(counts[0])
        info["prompt_tokens"] = int(counts[1])
        info["labels"] = [x for x in (counts[2] or []) if x is not None]
        row = self._one(
            "SELECT count(*), count(*) FILTER (WHERE phase = 'decode') FROM tokens "
            "WHERE run_id = ?",
            [run_id],
        )
        assert row is not None
        info["tokens"], info["decode_tokens"] = int(row[0]), int(row[1])
        return info

    def moe_layers(self, run_id: str) -> list[int]:
        """The model layer numbers of the run's MoE layers (the Trace's `layers`)."""
        if run_id not in self._moe_layers:
            row = self._one("SELECT moe_layers FROM runs WHERE run_id = ?", [run_id])
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.path}; {self._run_list_hint()}")
            self._moe_layers[run_id] = [int(x) for x in row[0]]
        return self._moe_layers[run_id]

    def get_meta(self, key: str) -> Any:
        """The JSON value stored under `key`, or None."""
        row = self._one("SELECT value FROM meta WHERE key = ?", [key])
        return None if row is None else json.loads(row[0])

    # ---- routing ----------------------------------------------------------------------------
    def source(
        self,
        run: str | None = None,
        phase: str = "all",
        labels: Sequence[str] | None = None,
        seq_ids: Sequence[int] | None = None,
    ) -> StoreSource:
        """The run as a `TraceSource`: chunks of whole sequences, read on demand (DESIGN §7)."""
        reopen = None if self.path == ":memory:" else self.path
        return StoreSource(
            lambda: self.con,  # the current connection, even after a reopen
            self.resolve_run(run),
            phase=phase,
            labels=labels,
            seq_ids=seq_ids,
            path=reopen,
        )

    def load_trace(
        self,
        run: str | None = None,
        phase: str = "all",
        labels: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
    ) -> Trace:
        """The whole run (narrowed to phase, labels, layers) as one in-memory `Trace`.

        For small runs and notebooks; analyses take `source(...)` instead and stay in bounded
        memory whatever the run's size.
        """
        if phase not in ("all", "prefill", "decode"):
            raise InvalidParameterError(f"unknown phase {phase!r}; use one of prefill, decode, all")
        src = self.source(run, phase=phase, labels=labels)
        return src.read(0, src.info.num_sequences, layers)

    def sequence_trace(self, run: str | None, seq_id: int) -> Trace:
        """One sequence of the run (all phases, all layers): what the dashboard's Tokens page reads."""
        src = self.source(run, seq_ids=[int(seq_id)])
        if src.info.num_sequences == 0:
            raise StoreError(f"run {src.run_id} has no sequence {seq_id}")
        return src.read(0, 1)

    def token_strings(
        self, run: str | None = None, token_ids: Sequence[int] | None = None
    ) -> dict[int, str]:
        """Token id → its text as recorded in the run (only `token_ids` when given)."""
        run_id = self.resolve_run(run)
        where = "run_id = $run"
        params: dict[str, Any] = {"run": run_id}
        if token_ids is not None:
            where += " AND list_contains($ids, token_id)"
            params["ids"] = [int(x) for x in np.unique(np.asarray(token_ids))]
        rows = self.con.sql(
            f"SELECT token_id, any_value(token) FROM tokens WHERE {where} GROUP BY token_id",
            params=params,
        ).fetchall()
        return {int(i): str(t) for i, t in rows}

    def sequences(self, run: str | None = None) -> pl.DataFrame:
        """The run's `sequences` rows ordered by seq_id."""
        run_id = self.resolve_run(run)
        return pl.from_arrow(  # type: ignore[return-value]
            self._arrow("SELECT * FROM sequences WHERE run_id = ? ORDER BY seq_id", [run_id])
        )
