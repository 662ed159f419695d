"""`RoutingStore`: the DuckDB file that holds every run's routing (DESIGN.md §3).

One process writes at a time; readers (the app, analyses) open read-only. Writes go through Arrow
tables inserted with `INSERT … SELECT` from a registered frame, one transaction per batch of whole
sequences, so an interrupted job never leaves half a sequence behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from routescope.core.records import BatchRouting
from routescope.core.errors import InvalidParameterError, StoreError
from routescope.store.schema import DDL, SCHEMA_VERSION
from routescope.core.trace import PHASES, Trace

DEFAULT_DB = "routescope.duckdb"

#: Run-level columns that must agree when a run is resumed (the routing shape of the model).
_SHAPE_KEYS = ("model_id", "num_layers", "moe_layers", "num_experts", "top_k")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal dicts give equal strings (cache keys)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _lock_message(path: str, exc: Exception) -> str:
    """One line for a database another process holds."""
    pid = re.search(r"PID (\d+)", str(exc))
    who = f" (process {pid.group(1)})" if pid else ""
    return (
        f"database {path} is locked by another process{who}; wait for that collection to finish "
        "(or stop it), or point --db at another file"
    )


def _connect_retrying(path: str, read_only: bool, lock_timeout: float) -> duckdb.DuckDBPyConnection:
    """Open the file, retrying up to `lock_timeout` seconds (20 ms doubling to 0.2 s) while another
    process holds its lock (a reader between two commits of a collection, or the reverse)."""
    deadline = time.monotonic() + max(lock_timeout, 0.0)
    delay = 0.02
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise StoreError(f"cannot open database {path}: {exc}".splitlines()[0]) from None
            if time.monotonic() + delay > deadline:
                raise StoreError(_lock_message(path, exc)) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        except duckdb.Error as exc:
            first = str(exc).splitlines()[0]
            raise StoreError(f"cannot open {path} as a DuckDB database: {first}") from None


#: arguments of an analysis that do not change its result (left out of cache keys)
_NOT_PARAMETERS = frozenset({"progress"})

_CACHE_INSERT = (
    "INSERT OR REPLACE INTO analysis_cache (run_id, kind, params_key, params, result) "
    "VALUES (?, ?, ?, ?, ?)"
)

#: seconds a read-only open waits while a collection job holds the file for a commit
READER_LOCK_TIMEOUT = 10.0


class RoutingStore:
    """A routing database: runs, sequences, tokens, routes (+ router_probs, presets, notes, cache).

    `RoutingStore(path)` opens (creating if needed) for writing; `read_only=True` for readers.
    Usable as a context manager; `close()` releases the file lock.
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
            # readers wait briefly for a collection job to finish its commit
            lock_timeout = READER_LOCK_TIMEOUT
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            raise StoreError(
                f"no routing database at {self.path}; run `routescope collect` first or pass --db"
            )
        self.con = _connect_retrying(self.path, read_only, lock_timeout)
        self._reopenable = read_only and self.path != ":memory:"
        if not read_only:
            self.con.execute(DDL)
            self.con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
            )

    # ---- lifecycle --------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (and release the file lock)."""
        self.con.close()

    def __enter__(self) -> RoutingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _one(self, sql: str, params: Any = None) -> tuple | None:
        """First row of a query, or None (the result is drained: duckdb 2 refuses new work
        on a connection with an unfinished result)."""
        rows = self.con.execute(sql, params).fetchall()
        return rows[0] if rows else None

    def _arrow(self, sql: str, params: Any = None) -> pa.Table:
        """A query's result as an Arrow table (duckdb 2: via a relation, no extra copy)."""
        return self.con.sql(sql, params=params).to_arrow_table()

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"database {self.path} is open read-only; open it for writing")

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
               coalesce(s.labels, []) AS labels, r.status, r.steering_id, r.created_at
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
        info["sequences"] = int(counts[0])  # type: ignore[index]
        info["prompt_tokens"] = int(counts[1])  # type: ignore[index]
        info["labels"] = [x for x in (counts[2] or []) if x is not None]  # type: ignore[index]
        row = self._one(
            "SELECT count(*), count(*) FILTER (WHERE phase = 'decode') FROM tokens "
            "WHERE run_id = ?",
            [run_id],
        )
        info["tokens"], info["decode_tokens"] = int(row[0]), int(row[1])  # type: ignore[index]
        return info

    def moe_layers(self, run_id: str) -> list[int]:
        """The model layer numbers of the run's MoE layers (the Trace's `layers`)."""
        if run_id not in self._moe_layers:
            row = self._one("SELECT moe_layers FROM runs WHERE run_id = ?", [run_id])
            if row is None:
                raise StoreError(f"no run {run_id!r} in {self.path}; {self._run_list_hint()}")
            self._moe_layers[run_id] = [int(x) for x in row[0]]
        return self._moe_layers[run_id]

    # ---- readers ----------------------------------------------------------------------------
    def load_trace(
        self,
        run: str | None = None,
        phase: str = "all",
        labels: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
    ) -> Trace:
        """The run's routing as a `Trace` (token rows by seq_id then position).

        phase: 'all', 'prefill' or 'decode'; labels: keep sequences with these labels;
        layers: keep these MoE layers (model layer numbers). Filters run in SQL; the route rows
        become numpy arrays through Arrow, with no per-row Python.
        """
        run_id = self.resolve_run(run)
        info = self._one("SELECT num_experts, top_k, model_id FROM runs WHERE run_id = ?", [run_id])
        num_experts, top_k, model_id = int(info[0]), int(info[1]), info[2]  # type: ignore[index]
        all_layers = self.moe_layers(run_id)
        if layers is None:
            sel_layers = list(all_layers)
        else:
            sel_layers = [int(x) for x in layers]
            bad = [x for x in sel_layers if x not in all_layers]
            if len(set(sel_layers)) != len(sel_layers):
                raise InvalidParameterError(f"layers {sel_layers} repeat a layer; list each once")
            if bad:
                raise InvalidParameterError(
                    f"layer(s) {bad} are not MoE layers of run {run_id}; "
                    f"MoE layers are {all_layers}"
                )
        if phase != "all" and phase not in PHASES:
            raise InvalidParameterError(f"unknown phase {phase!r}; use one of prefill, decode, all")

        seq_where = ["run_id = $run"]
        params: dict[str, Any] = {"run": run_id}
        if labels is not None:
            present = {
                r[0]
                for r in self.con.execute(
                    "SELECT DISTINCT label FROM sequences WHERE run_id = ?", [run_id]
                ).fetchall()
            }
            missing = [lab for lab in labels if lab not in present]
            if missing:
                known = sorted(str(x) for x in present if x is not None)
                raise InvalidParameterError(
                    f"label(s) {missing} not in run {run_id}; labels are {known}"
                )
            seq_where.append("list_contains($labels, label)")
            params["labels"] = list(labels)
        tok_where = ["t.run_id = $run"]
        if phase != "all":
            tok_where.append("t.phase = $phase")
            params["phase"] = phase

        sel_cte = f"""
            sel_seq AS (SELECT seq_id, prompt_set, prompt_id, label FROM sequences
                        WHERE {" AND ".join(seq_where)}),
            sel_tok AS (SELECT t.seq_id, t.pos, t.token_id, t.phase, t.in_target FROM tokens t
                        SEMI JOIN sel_seq s ON t.seq_id = s.seq_id
                        WHERE {" AND ".join(tok_where)})
        """
        seqs = self._arrow(
            f"""WITH {sel_cte}
            SELECT s.seq_id, s.prompt_set, s.prompt_id, s.label, count(t.pos) AS n
            FROM sel_seq s JOIN sel_tok t USING (seq_id)
            GROUP BY ALL ORDER BY s.seq_id""",
            params,
        )
        toks = self._arrow(
            f"WITH {sel_cte} SELECT pos, token_id, phase, in_target FROM sel_tok "
            "ORDER BY seq_id, pos",
            params,
        )
        n_tok = toks.num_rows
        n_lay = len(sel_layers)
        params["layers"] = sel_layers
        route_src = (
            "routes r SEMI JOIN sel_tok t ON r.seq_id = t.seq_id AND r.pos = t.pos"
            if (phase != "all" or labels is not None)
            else "routes r"
        )
        routes = self._arrow(
            f"""WITH {sel_cte}
            SELECT r.experts, r.weights FROM {route_src}
            WHERE r.run_id = $run AND list_contains($layers, r.layer)
            ORDER BY r.seq_id, r.pos, list_position($layers, r.layer)""",
            params,
        )
        if routes.num_rows != n_tok * n_lay:
            raise StoreError(
                f"run {run_id} is inconsistent: {routes.num_rows} route rows for {n_tok} tokens x "
                f"{n_lay} layers; re-collect it into a new database"
            )
        experts = _list_column_to_numpy(routes.column("experts"), np.int16).reshape(
            n_tok, n_lay, top_k
        )
        weights = _list_column_to_numpy(routes.column("weights"), np.float32).reshape(
            n_tok, n_lay, top_k
        )
        counts = seqs.column("n").to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        phase_arr = (toks.column("phase").to_numpy(zero_copy_only=False) == "decode").astype(
            np.uint8
        )
        return Trace(
            experts=experts,
            weights=weights,
            seq_offsets=offsets,
            num_experts=num_experts,
            top_k=top_k,
            layers=tuple(sel_layers),
            phase=phase_arr,
            token_ids=toks.column("token_id").to_numpy().astype(np.int64),
            positions=toks.column("pos").to_numpy().astype(np.int32),
            in_target=toks.column("in_target").to_numpy(zero_copy_only=False).astype(bool),
            labels=_objects(seqs.column("label")),
            seq_ids=seqs.column("seq_id").to_numpy().astype(np.int64),
            prompt_sets=_objects(seqs.column("prompt_set")),
            prompt_ids=_objects(seqs.column("prompt_id")),
            run_id=run_id,
            model_id=model_id,
        )

    def token_strings(self, run: str | None = None) -> dict[int, str]:
        """Token id → its text as recorded in the run."""
        run_id = self.resolve_run(run)
        rows = self.con.execute(
            "SELECT token_id, any_value(token) FROM tokens WHERE run_id = ? GROUP BY token_id",
            [run_id],
        ).fetchall()
        return {int(i): str(t) for i, t in rows}

    def sequences(self, run: str | None = None) -> pl.DataFrame:
        """The run's `sequences` rows ordered by seq_id."""
        run_id = self.resolve_run(run)
        return pl.from_arrow(  # type: ignore[return-value]
            self._arrow("SELECT * FROM sequences WHERE run_id = ? ORDER BY seq_id", [run_id])
        )

    # ---- analysis cache ---------------------------------------------------------------------
    def cached_result(
        self,
        run_id: str,
        kind: str,
        params: Mapping[str, Any],
        compute: Callable[[], pl.DataFrame],
    ) -> pl.DataFrame:
        """`compute()`'s frame, cached per (run, kind, canonical params) as Arrow IPC bytes.

        A hit returns the stored frame; a miss computes and (if writable) stores it. Writing to a
        run clears its cache entries, so a resumed run never serves stale results.
        """
        params_json = canonical_json(dict(params))
        key = hashlib.sha256(params_json.encode()).hexdigest()
        row = self._one(
            "SELECT result FROM analysis_cache WHERE run_id = ? AND kind = ? AND params_key = ?",
            [run_id, kind, key],
        )
        if row is not None:
            return pl.read_ipc(io.BytesIO(row[0]))
        result = compute()
        if not isinstance(result, pl.DataFrame):
            raise TypeError(
                f"cached_result compute() must return a polars DataFrame, got {result!r}"
            )
        buf = io.BytesIO()
        result.write_ipc(buf)
        entry = [run_id, kind, key, params_json, buf.getvalue()]
        if not self.read_only:
            self.con.execute(_CACHE_INSERT, entry)
        elif self._reopenable:
            self._cache_briefly(entry)
        return result

    def cached_analysis(
        self,
        run_id: str,
        fn: Callable[..., pl.DataFrame],
        load: Callable[[], Trace],
        *,
        selection: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> pl.DataFrame:
        """`fn(load(), **kwargs)` through `cached_result`, keyed by fn's qualified name and its
        full arguments (defaults filled in), so the CLI and the dashboard share entries.

        `load` is called only on a miss; it may return the run's trace already narrowed to the
        `phase`/`labels` in kwargs (the analyses select them again, which is then a no-op). When
        `load` narrows the trace in a way fn's arguments do not say (e.g. phase for functions
        without a phase argument), name it in `selection`: it becomes part of the key.
        """
        import inspect

        bound = inspect.signature(fn).bind_partial(None, **kwargs)
        bound.apply_defaults()
        params = {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in list(bound.arguments.items())[1:]
            if k not in _NOT_PARAMETERS
        }
        if selection:
            params["_selection"] = dict(selection)
        kind = f"{fn.__module__}.{fn.__qualname__}"
        return self.cached_result(run_id, kind, params, lambda: fn(load(), **kwargs))

    def _cache_briefly(self, entry: list[Any]) -> None:
        """From a read-only store: take the write lock just long enough to save a cache entry, so
        the next reader (CLI or dashboard) skips the computation. Skipped when a writer holds it."""
        self.con.close()
        try:
            con = duckdb.connect(self.path)
        except duckdb.Error:
            con = None  # a collection job is committing: keep the result, cache it next time
        if con is not None:
            try:
                con.execute(_CACHE_INSERT, entry)
            finally:
                con.close()
        self.con = _connect_retrying(self.path, True, READER_LOCK_TIMEOUT)

    # ---- writer -----------------------------------------------------------------------------
    def create_or_resume_run(
        self,
        run_id: str,
        *,
        name: str | None,
        model_id: str,
        family: str | None,
        num_layers: int,
        moe_layers: Sequence[int],
        num_experts: int,
        top_k: int,
        num_shared_experts: int = 0,
        norm_topk_prob: bool | None = None,
        model_revision: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        steering_id: str | None = None,
        config: Mapping[str, Any] | None = None,
        versions: Mapping[str, Any] | None = None,
    ) -> bool:
        """Create the run, or reopen it for resuming; returns True when it already existed.

        Resuming checks that the model shape and the job config match what the run recorded, so
        a changed job never mixes into an old run. Status becomes 'running'.
        """
        self._require_writable()
        new = {
            "model_id": model_id,
            "num_layers": int(num_layers),
            "moe_layers": [int(x) for x in moe_layers],
            "num_experts": int(num_experts),
            "top_k": int(top_k),
        }
        config_json = canonical_json(dict(config or {}))
        cur = self.con.execute(
            "SELECT model_id, num_layers, moe_layers, num_experts, top_k, config FROM runs "
            "WHERE run_id = ?",
            [run_id],
        )
        rows = cur.fetchall()
        row = rows[0] if rows else None
        if row is not None:
            old = dict(zip(_SHAPE_KEYS, row[:5], strict=True))
            old["moe_layers"] = [int(x) for x in old["moe_layers"]]
            diff = [k for k in _SHAPE_KEYS if old[k] != new[k]]
            if row[5] is not None and canonical_json(json.loads(row[5])) != config_json:
                diff.append("config")
            if diff:
                raise StoreError(
                    f"run {run_id} already exists in {self.path} with a different "
                    f"{', '.join(diff)}; give this job another --name (or use another --db)"
                )
            self.set_status(run_id, "running")
            return True
        self.con.execute(
            """INSERT INTO runs (run_id, name, model_id, model_revision, family, num_layers,
                moe_layers, num_experts, top_k, num_shared_experts, norm_topk_prob, dtype, device,
                steering_id, config, versions, status)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running')""",
            [
                run_id,
                name or run_id,
                model_id,
                model_revision,
                family,
                int(num_layers),
                new["moe_layers"],
                int(num_experts),
                int(top_k),
                int(num_shared_experts),
                norm_topk_prob,
                dtype,
                device,
                steering_id,
                config_json,
                canonical_json(dict(versions or {})),
            ],
        )
        self._moe_layers[run_id] = new["moe_layers"]
        return False

    def set_status(self, run_id: str, status: str) -> None:
        """Mark a run running / complete / interrupted / failed."""
        self._require_writable()
        self.con.execute("UPDATE runs SET status = ? WHERE run_id = ?", [status, run_id])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under `key` in the meta table (e.g. a run's job size)."""
        self._require_writable()
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, canonical_json(value)])

    def get_meta(self, key: str) -> Any:
        """The JSON value stored under `key`, or None."""
        row = self._one("SELECT value FROM meta WHERE key = ?", [key])
        return None if row is None else json.loads(row[0])

    def stored_seq_ids(self, run_id: str) -> set[int]:
        """Sequence ids already written for the run (these are skipped on resume)."""
        rows = self.con.execute(
            "SELECT seq_id FROM sequences WHERE run_id = ?", [run_id]
        ).fetchall()
        return {int(r[0]) for r in rows}

    def write_batch(
        self,
        run_id: str,
        seqs_meta: Sequence[Mapping[str, Any]],
        batch: BatchRouting,
        token_texts: Mapping[int, str] | Sequence[str] | None = None,
        in_target: np.ndarray | None = None,
    ) -> int:
        """Write a batch of whole sequences (sequences, tokens, routes, probs) in one transaction.

        seqs_meta[b]: seq_id (required), prompt_set, prompt_id, label, text for batch sequence b.
        token_texts: token id → text, or one string per token row. in_target: bool per token row.
        Returns the number of route rows written.
        """
        self._require_writable()
        b = batch.num_sequences
        if len(seqs_meta) != b:
            raise ValueError(f"{len(seqs_meta)} sequence records for a batch of {b} sequences")
        layers = self.moe_layers(run_id)
        n = batch.num_tokens
        n_lay = len(layers)
        if batch.experts.ndim != 3 or batch.experts.shape[:2] != (n, n_lay):
            raise ValueError(
                f"batch experts have shape {batch.experts.shape}, expected [{n}, {n_lay}, k]"
            )
        k = batch.experts.shape[2]
        seq_ids = np.asarray([int(m["seq_id"]) for m in seqs_meta], dtype=np.int64)
        lengths = np.diff(np.asarray(batch.seq_offsets, dtype=np.int64))
        row_seq = np.repeat(seq_ids, lengths)
        positions = np.asarray(batch.positions, dtype=np.int32)
        token_ids = np.asarray(batch.token_ids, dtype=np.int64)

        if token_texts is None:
            texts = pa.nulls(n, pa.string())
        elif isinstance(token_texts, Mapping):
            uniq, inv = np.unique(token_ids, return_inverse=True)
            texts = pa.array([token_texts.get(int(u)) for u in uniq], pa.string()).take(
                pa.array(inv.astype(np.int64))
            )
        else:
            texts = pa.array(list(token_texts), pa.string())
        phase_names = np.asarray(PHASES, dtype=object)[np.asarray(batch.phase, dtype=np.int64)]
        tgt = np.zeros(n, dtype=bool) if in_target is None else np.asarray(in_target, dtype=bool)

        seq_tbl = pa.table(
            {
                "run_id": pa.array([run_id] * b, pa.string()),
                "seq_id": pa.array(seq_ids),
                "prompt_set": pa.array([m.get("prompt_set") for m in seqs_meta], pa.string()),
                "prompt_id": pa.array(
                    [
                        None if m.get("prompt_id") is None else str(m["prompt_id"])
                        for m in seqs_meta
                    ],
                    pa.string(),
                ),
                "label": pa.array([m.get("label") for m in seqs_meta], pa.string()),
                "text": pa.array([m.get("text") for m in seqs_meta], pa.string()),
                "num_tokens": pa.array(lengths.astype(np.int32)),
            }
        )
        run_col = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(n, dtype=np.int32)), pa.array([run_id])
        )
        tok_tbl = pa.table(
            {
                "run_id": run_col,
                "seq_id": pa.array(row_seq),
                "pos": pa.array(positions),
                "token_id": pa.array(token_ids.astype(np.int32)),
                "token": texts,
                "phase": pa.array(phase_names, pa.string()),
                "in_target": pa.array(tgt),
            }
        )
        nl = n * n_lay
        route_run = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(nl, dtype=np.int32)), pa.array([run_id])
        )
        route_cols = {
            "run_id": route_run,
            "seq_id": pa.array(np.repeat(row_seq, n_lay)),
            "pos": pa.array(np.repeat(positions, n_lay)),
            "layer": pa.array(np.tile(np.asarray(layers, dtype=np.int16), n)),
        }
        route_tbl = pa.table(
            {
                **route_cols,
                "experts": _fixed_lists(batch.experts, np.uint16, k),
                "weights": _fixed_lists(batch.weights, np.float32, k),
            }
        )
        probs_tbl = None
        if batch.probs is not None:
            e = batch.probs.shape[2]
            probs_tbl = pa.table({**route_cols, "probs": _fixed_lists(batch.probs, np.float32, e)})

        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            dup = con.execute(
                "SELECT count(*) FROM sequences WHERE run_id = ? AND list_contains(?, seq_id)",
                [run_id, seq_ids.tolist()],
            ).fetchall()[0][0]
            if dup:
                raise StoreError(
                    f"{dup} of these sequences are already stored in run {run_id}; "
                    "a resumed job must skip stored_seq_ids()"
                )
            for table, tbl in (
                ("sequences", seq_tbl),
                ("tokens", tok_tbl),
                ("routes", route_tbl),
                ("router_probs", probs_tbl),
            ):
                if tbl is None:
                    continue
                con.register("_rs_batch", tbl)
                cols = ", ".join(tbl.column_names)
                con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _rs_batch")
                con.unregister("_rs_batch")
            con.execute("DELETE FROM analysis_cache WHERE run_id = ?", [run_id])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return nl

    # ---- presets and notes (small tables other parts edit) ----------------------------------
    def table(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> pl.DataFrame:
        """Run a read query and return a polars frame (for CLI/app listings)."""
        return pl.from_arrow(self._arrow(sql, params))  # type: ignore[return-value]


def _fixed_lists(arr: np.ndarray, dtype: type, width: int) -> pa.ListArray:
    """[N, L, w] numpy → Arrow list array of N*L lists of length w, without Python loops."""
    flat = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    rows = flat.size // width if width else 0
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(flat))


def _list_column_to_numpy(col: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """Flatten an Arrow list column of equal-length lists into one numpy vector."""
    if col.num_chunks == 0:
        return np.zeros(0, dtype=dtype)
    parts = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in col.chunks]
    return np.concatenate(parts).astype(dtype, copy=False)


def _objects(col: pa.ChunkedArray) -> np.ndarray:
    """An Arrow string column as a numpy object array (None kept)."""
    return np.asarray(col.to_pylist(), dtype=object)


class CollectionLock:
    """An advisory lock file held while one collection writes to a store (released by
    `release()` or at process exit); a second collection into the same store stops at once."""

    def __init__(self, lock_path: str | Path, store: str) -> None:
        self.path = str(lock_path)
        self._fd: int | None = None
        try:
            import fcntl
        except ImportError:  # no advisory locks here: DuckDB's lock still guards each commit
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return  # e.g. a missing directory: opening the store reports it clearly
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="ignore").strip()
            os.close(fd)
            who = f" (process {holder})" if holder.isdigit() else ""
            raise StoreError(
                f"another collection{who} is writing to {store}; wait for it to finish "
                "(or stop it), or point --db at another file"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and release the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


class IntermittentStore:
    """A writable store that holds the DuckDB file's lock only during each call.

    A long collection writes through this: every call opens the file (retrying while a reader
    holds it), does its work in one transaction, and closes it, so other processes can read the
    store between commits and see every committed sequence. `exclusive` (default) also holds an
    advisory lock on `<db>.collect-lock` until `close()`, so a second collection into the same
    file stops at once with one clear line instead of interleaving with the first.
    """

    def __init__(
        self, path: str | Path = DEFAULT_DB, lock_timeout: float = 300.0, exclusive: bool = True
    ) -> None:
        self.path = str(path)
        self.lock_timeout = lock_timeout
        self.read_only = False
        self._lock = CollectionLock(self.path + ".collect-lock", self.path) if exclusive else None

    def open(self) -> RoutingStore:
        """The store opened for writing (a context manager; closing releases the lock)."""
        return RoutingStore(self.path, lock_timeout=self.lock_timeout)

    def close(self) -> None:
        """Release the collection lock (nothing else is held between calls)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> IntermittentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_or_resume_run(self, run_id: str, **kwargs: Any) -> bool:
        with self.open() as store:
            return store.create_or_resume_run(run_id, **kwargs)

    def set_status(self, run_id: str, status: str) -> None:
        with self.open() as store:
            store.set_status(run_id, status)

    def set_meta(self, key: str, value: Any) -> None:
        with self.open() as store:
            store.set_meta(key, value)

    def stored_seq_ids(self, run_id: str) -> set[int]:
        with self.open() as store:
            return store.stored_seq_ids(run_id)

    def write_batch(self, run_id: str, *args: Any, **kwargs: Any) -> int:
        with self.open() as store:
            return store.write_batch(run_id, *args, **kwargs)
