"""Writing runs into a DuckDB store: the run's row, batches of whole sequences, status, meta.

Writes go through Arrow tables inserted with `INSERT … SELECT` from a registered frame, one
transaction per batch of whole sequences, so an interrupted job never leaves half a sequence.
`batch_tables` builds those Arrow tables (shared with the Parquet parts store). `StoreWriter` is
the mixin `RoutingStore` writes with; `IntermittentStore` is the writer a long collection uses:
it holds the file's lock only while it commits, so other processes read between commits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

import duckdb
import numpy as np
import pyarrow as pa

from routescope.core.canonical import canonical_json
from routescope.core.defaults import DEFAULT_DB
from routescope.core.errors import StoreError
from routescope.core.protocols import RunFields
from routescope.core.records import BatchRouting
from routescope.core.trace import PHASES
from routescope.store.connect import CollectionLock
from routescope.store.layout import finish_runs

if TYPE_CHECKING:
    from routescope.store.store import RoutingStore

#: Run-level columns that must agree when a run is resumed (the routing shape of the model).
SHAPE_KEYS = ("model_id", "num_layers", "moe_layers", "num_experts", "top_k")

#: Tables that hold a run's routing, in the order a batch writes them.
RUN_TABLES = ("sequences", "tokens", "routes", "router_probs", "speculative_routes")


def fixed_lists(arr: np.ndarray, dtype: type, width: int) -> pa.ListArray:
    """[N, L, w] numpy → Arrow list array of N*L lists of length w, without Python loops."""
    flat: np.ndarray = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    rows = flat.size // width if width else 0
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(flat))


def _dictionary(value: str, n: int) -> pa.DictionaryArray:
    """A column holding `value` n times, stored once."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))


def batch_tables(
    run_id: str,
    layers: Sequence[int],
    seqs_meta: Sequence[Mapping[str, Any]],
    batch: BatchRouting,
    token_texts: Mapping[int, str] | Sequence[str | None] | None = None,
    in_target: np.ndarray | None = None,
) -> dict[str, pa.Table]:
    """The Arrow tables (sequences, tokens, routes, router_probs) of a batch of whole sequences.

    seqs_meta[b]: seq_id (required), prompt_set, prompt_id, label, text for batch sequence b.
    token_texts: token id → text, or one string per token row. in_target: bool per token row.
    A batch without weights (an imported trace) stores NULL weights.
    """
    b = batch.num_sequences
    if len(seqs_meta) != b:
        raise ValueError(f"{len(seqs_meta)} sequence records for a batch of {b} sequences")
    n = batch.num_tokens
    n_lay = len(layers)
    if batch.experts.ndim != 3 or batch.experts.shape[:2] != (n, n_lay):
        raise ValueError(
            f"batch experts have shape {batch.experts.shape}, expected [{n}, {n_lay}, k]"
        )
    k = batch.experts.shape[2]
    seq_ids = np.asarray([int(m["seq_id"]) for m in seqs_meta], dtype=np.int64)
    lengths: np.ndarray = np.diff(np.asarray(batch.seq_offsets, dtype=np.int64))
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

    def meta_col(key: str) -> pa.Array:
        return pa.array(
            [None if m.get(key) is None else str(m[key]) for m in seqs_meta], pa.string()
        )

    tables: dict[str, pa.Table] = {
        "sequences": pa.table(
            {
                "run_id": pa.array([run_id] * b, pa.string()),
                "seq_id": pa.array(seq_ids),
                "prompt_set": meta_col("prompt_set"),
                "prompt_id": meta_col("prompt_id"),
                "label": meta_col("label"),
                "text": meta_col("text"),
                "num_tokens": pa.array(lengths.astype(np.int32)),
            }
        ),
        "tokens": pa.table(
            {
                "run_id": _dictionary(run_id, n),
                "seq_id": pa.array(row_seq),
                "pos": pa.array(positions),
                # an imported trace without token ids passes -1: stored as NULL
                "token_id": pa.array(token_ids.astype(np.int32), mask=token_ids < 0),
                "token": texts,
                "phase": pa.array(phase_names, pa.string()),
                "in_target": pa.array(tgt),
            }
        ),
    }
    nl = n * n_lay
    route_cols = {
        "run_id": _dictionary(run_id, nl),
        "seq_id": pa.array(np.repeat(row_seq, n_lay)),
        "pos": pa.array(np.repeat(positions, n_lay)),
        "layer": pa.array(np.tile(np.asarray(layers, dtype=np.int16), n)),
    }
    weights = (
        pa.nulls(nl, pa.list_(pa.float32()))
        if batch.weights is None
        else fixed_lists(batch.weights, np.float32, k)
    )
    tables["routes"] = pa.table(
        {**route_cols, "experts": fixed_lists(batch.experts, np.uint16, k), "weights": weights}
    )
    if batch.probs is not None:
        e = batch.probs.shape[2]
        tables["router_probs"] = pa.table(
            {**route_cols, "probs": fixed_lists(batch.probs, np.float32, e)}
        )
    if batch.speculative is not None:
        tables["speculative_routes"] = _speculative_table(
            run_id, layers, row_seq, positions, batch.speculative
        )
    return tables


def _speculative_table(
    run_id: str, layers: Sequence[int], row_seq: np.ndarray, positions: np.ndarray, spec: np.ndarray
) -> pa.Table:
    """Rows (token, layer, distance) of the speculative rankings int16[N, L, D, m]."""
    n, n_lay, dist, m = spec.shape
    rows = n * n_lay * dist
    return pa.table(
        {
            "run_id": _dictionary(run_id, rows),
            "seq_id": pa.array(np.repeat(row_seq, n_lay * dist)),
            "pos": pa.array(np.repeat(positions, n_lay * dist)),
            "layer": pa.array(np.tile(np.repeat(np.asarray(layers, dtype=np.int16), dist), n)),
            "distance": pa.array(np.tile(np.arange(1, dist + 1, dtype=np.int16), n * n_lay)),
            "experts": fixed_lists(spec, np.int16, m),
        }
    )


def insert_arrow(
    con: duckdb.DuckDBPyConnection, table: str, tbl: pa.Table, verb: str = "INSERT"
) -> None:
    """`verb INTO table SELECT … FROM` an Arrow table (no Python loop over rows)."""
    con.register("_rs_batch", tbl)
    try:
        cols = ", ".join(tbl.column_names)
        con.execute(f"{verb} INTO {table} ({cols}) SELECT {cols} FROM _rs_batch")
    finally:
        con.unregister("_rs_batch")


class StoreWriter:
    """The writing methods of `RoutingStore` (a `RunWriter`); they need `self.con`, `self.path`,
    `self.read_only` and `self.moe_layers(run_id)`."""

    con: duckdb.DuckDBPyConnection
    path: str
    read_only: bool
    _moe_layers: dict[str, list[int]]

    def moe_layers(self, run_id: str) -> list[int]:  # provided by the reader
        raise NotImplementedError

    def _require_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"database {self.path} is open read-only; open it for writing")

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
        source: str = "routescope",
        has_weights: bool = True,
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
        rows = self.con.execute(
            "SELECT model_id, num_layers, moe_layers, num_experts, top_k, config FROM runs "
            "WHERE run_id = ?",
            [run_id],
        ).fetchall()
        if rows:
            row = rows[0]
            old = dict(zip(SHAPE_KEYS, row[:5], strict=True))
            old["moe_layers"] = [int(x) for x in old["moe_layers"]]
            diff = [k for k in SHAPE_KEYS if old[k] != new[k]]
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
                steering_id, config, versions, status, source, has_weights)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)""",
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
                source,
                bool(has_weights),
            ],
        )
        self._moe_layers[run_id] = [int(x) for x in moe_layers]
        return False

    def set_status(self, run_id: str, status: str) -> None:
        """Mark a run running / complete / interrupted / failed / partial."""
        self._require_writable()
        self.con.execute("UPDATE runs SET status = ? WHERE run_id = ?", [status, run_id])

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value under `key` in the meta table (e.g. a run's job size)."""
        self._require_writable()
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, canonical_json(value)])

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
        token_texts: Mapping[int, str] | Sequence[str | None] | None = None,
        in_target: np.ndarray | None = None,
    ) -> int:
        """Write a batch of whole sequences (sequences, tokens, routes, probs) in one transaction.

        Returns the number of route rows written. The run's stored analysis results are dropped
        (they no longer describe it) and its layout is marked unclustered until `finish_run`.
        """
        self._require_writable()
        tables = batch_tables(
            run_id, self.moe_layers(run_id), seqs_meta, batch, token_texts, in_target
        )
        seq_ids = tables["sequences"].column("seq_id").to_pylist()
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            dup = con.execute(
                "SELECT count(*) FROM sequences WHERE run_id = ? AND list_contains(?, seq_id)",
                [run_id, seq_ids],
            ).fetchall()[0][0]
            if dup:
                raise StoreError(
                    f"{dup} of these sequences are already stored in run {run_id}; "
                    "a resumed job must skip stored_seq_ids()"
                )
            for table in RUN_TABLES:
                if table in tables:
                    insert_arrow(con, table, tables[table])
            con.execute("DELETE FROM analysis_results WHERE run_id = ?", [run_id])
            con.execute("UPDATE runs SET layout = NULL WHERE run_id = ?", [run_id])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return tables["routes"].num_rows

    def finish_run(self, run_id: str) -> None:
        """The job stopped writing to the run: cluster its rows by layer for reading.

        A file store is compacted while at it when clustering in place would leave it with much
        free space (`routescope.store.layout.finish_runs`); `self.con` keeps working.
        """
        self._require_writable()
        finish_runs(self.con, [run_id])


class IntermittentStore:
    """A writable store (a `RunWriter`) that holds the DuckDB file's lock only during each call.

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
        from routescope.store.store import RoutingStore

        return RoutingStore(self.path, lock_timeout=self.lock_timeout)

    def close(self) -> None:
        """Release the collection lock (nothing else is held between calls)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> IntermittentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def create_or_resume_run(self, run_id: str, **run: Unpack[RunFields]) -> bool:
        with self.open() as store:
            return store.create_or_resume_run(run_id, **run)

    def set_status(self, run_id: str, status: str) -> None:
        with self.open() as store:
            store.set_status(run_id, status)

    def set_meta(self, key: str, value: Any) -> None:
        with self.open() as store:
            store.set_meta(key, value)

    def stored_seq_ids(self, run_id: str) -> set[int]:
        with self.open() as store:
            return store.stored_seq_ids(run_id)

    def write_batch(
        self,
        run_id: str,
        seqs_meta: Sequence[Mapping[str, Any]],
        batch: BatchRouting,
        token_texts: Mapping[int, str] | Sequence[str | None] | None = None,
        in_target: np.ndarray | None = None,
    ) -> int:
        with self.open() as store:
            return store.write_batch(run_id, seqs_meta, batch, token_texts, in_target)

    def finish_run(self, run_id: str) -> None:
        with self.open() as store:
            store.finish_run(run_id)
