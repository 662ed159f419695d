"""`StoreSource`: one run of a store (DuckDB file or Parquet export) read as chunks of sequences.

The `TraceSource` the streaming analyses take (DESIGN §7). Only the run's sequence list (ids,
labels, token counts) is held; each chunk is read with two queries (its tokens and its route rows,
filtered by a seq_id range that DuckDB's row-group statistics prune, and by layer), and put in
(sequence, position, layer) order with numpy, whatever order the rows are stored in. A clustered
run's rows arrive layer by layer and are copied as whole blocks (the chunk's experts are then a
[N, L, k] view of a [L, N, k] array, the layout the kernels walk); gate weights are read only
when asked for. Peak memory is one chunk, whatever the run's length: the read-only connection's
DuckDB cache is capped (`READ_MEMORY_LIMIT`), or every block read would stay resident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from routescope.core.errors import InvalidParameterError, StoreError
from routescope.core.source import DEFAULT_CHUNK_ROWS, SourceInfo, check_phase, plan_chunks
from routescope.core.trace import PHASES, Trace


def list_column_to_numpy(col: pa.ChunkedArray | pa.Array, dtype: type, width: int) -> np.ndarray:
    """An Arrow list column of lists of length `width` as one numpy vector (a clear error if a
    list has another length: the store is inconsistent)."""
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    parts = []
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        offsets = chunk.offsets.to_numpy()
        if np.any(np.diff(offsets) != width):
            raise StoreError(
                f"a stored list has a length other than {width}; the run is inconsistent"
            )
        parts.append(chunk.flatten().to_numpy(zero_copy_only=False))
    if not parts:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(parts).astype(dtype, copy=False)


def _fixed_values(col: pa.ChunkedArray, width: int, dtype: type) -> list[np.ndarray] | None:
    """Each Arrow chunk of a fixed-size list column as a [rows, width] numpy view of its values
    (reinterpreted as `dtype` of the same item size: uint16 experts as int16); None when a list
    or a value is NULL."""
    if col.null_count:
        return None
    parts = []
    for chunk in col.chunks:
        if len(chunk) == 0:
            continue
        values = chunk.flatten()
        if values.null_count:
            return None
        parts.append(values.to_numpy(zero_copy_only=True).view(dtype).reshape(-1, width))
    return parts


#: How route rows map to (token row, layer column) cells: ("layer", cols) = rows are one block
#: per layer, each holding every token in order (a clustered run; block b is column cols[b]);
#: ("token", cols) = rows are the tokens in order, each with its layers in the order cols (as
#: written); ("rows", dest) = the flat cell token * n_lay + column of each row.
Placement = tuple[str, np.ndarray]


def _placement(
    routes: pa.Table, t_key: np.ndarray, lay_col: np.ndarray, n_lay: int
) -> Placement | None:
    """Where each route row goes, checking the rows fill every (token, layer) cell once (None
    otherwise). The two physical orders a store holds are recognized in a few vectorized passes;
    any other order is placed by a search over the token keys."""
    n_tok = len(t_key)
    r_key = routes.column("seq_id").to_numpy().astype(np.int64) << 32 | routes.column(
        "pos"
    ).to_numpy().astype(np.int64)
    r_col = lay_col[routes.column("layer").to_numpy().astype(np.int64)]
    n = len(r_key)
    if n != n_tok * n_lay:
        return None
    if n == 0:
        return "rows", np.zeros(0, dtype=np.int64)
    every = np.arange(n_lay)
    blocks = r_col.reshape(n_lay, n_tok)
    cols = blocks[:, 0]
    if (
        np.array_equal(np.sort(cols), every)
        and (blocks == cols[:, None]).all()
        and (r_key.reshape(n_lay, n_tok) == t_key[None, :]).all()
    ):
        return "layer", cols
    rows = r_col.reshape(n_tok, n_lay)
    cols = rows[0]
    if (
        np.array_equal(np.sort(cols), every)
        and (rows == cols[None, :]).all()
        and (r_key.reshape(n_tok, n_lay) == t_key[:, None]).all()
    ):
        return "token", cols
    tok = np.searchsorted(t_key, r_key)
    if (r_col < 0).any() or (tok >= n_tok).any() or not np.array_equal(t_key[tok], r_key):
        return None
    dest = tok * n_lay + r_col
    if not np.array_equal(np.bincount(dest, minlength=n), np.ones(n, np.int64)):
        return None
    return "rows", dest


def _fill(
    parts: list[np.ndarray] | None, place: Placement, n_tok: int, n_lay: int, k: int
) -> np.ndarray | None:
    """[n_tok, n_lay, k] from the route rows' values (per Arrow chunk, in row order); rows
    stored layer by layer give a view of a [n_lay, n_tok, k] array (no transposing copy)."""
    if parts is None:
        return None
    dtype = parts[0].dtype if parts else np.int16
    kind, plan = place
    if kind == "layer":  # each chunk's slice of each layer block copied whole, no gather
        by_layer = np.empty((n_lay, n_tok, k), dtype=dtype)
        row = 0
        for part in parts:
            a, b = row, row + len(part)
            for blk in range(a // n_tok, (b - 1) // n_tok + 1):
                lo, hi = max(a, blk * n_tok), min(b, (blk + 1) * n_tok)
                by_layer[plan[blk], lo - blk * n_tok : hi - blk * n_tok] = part[lo - a : hi - a]
            row = b
        # [N, L, k] as a view: laid out layer by layer, as the kernels walk it
        return by_layer.transpose(1, 0, 2)
    out = np.empty((n_tok, n_lay, k), dtype=dtype)
    values = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if kind == "token":
        out[:, plan] = values.reshape(n_tok, n_lay, k)
    else:
        out.reshape(-1, k)[plan] = values
    return out


#: DuckDB keeps the blocks its queries read cached up to its memory limit (80% of RAM by
#: default), so a run streamed through one connection would end up resident. On the read-only
#: connections a source reads through, that limit is lowered to this many bytes (never raised):
#: a chunk's query needs a few hundred MB; the rest is read again from the OS's file cache.
READ_MEMORY_LIMIT = 512 << 20
_BYTE_UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_BYTE_UNITS |= {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def cap_read_memory(con: duckdb.DuckDBPyConnection, limit: int = READ_MEMORY_LIMIT) -> None:
    """Lower a read-only connection's DuckDB memory limit to `limit` bytes (see
    READ_MEMORY_LIMIT); writable connections and smaller limits are left alone."""
    try:
        value, mode = con.execute(
            "SELECT current_setting('memory_limit'), current_setting('access_mode')"
        ).fetchall()[0]
    except duckdb.Error:
        return
    found = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]+)\s*", str(value))
    if str(mode).lower() != "read_only" or found is None:
        return
    current = float(found.group(1)) * _BYTE_UNITS.get(found.group(2), 0)
    if current > limit:
        con.execute(f"SET memory_limit = '{limit // (1 << 20)}MiB'")


def _objects(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_pylist(), dtype=object)


class StoreSource:
    """The routing of run `run_id` on connection `con`, narrowed to `phase` and `labels`."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | Callable[[], duckdb.DuckDBPyConnection],
        run_id: str,
        *,
        phase: str = "all",
        labels: Sequence[str] | None = None,
        seq_ids: Sequence[int] | None = None,
        path: str | None = None,
    ) -> None:
        # a store passes a getter: its connection may be reopened (saving a result read-only)
        self._get_con: Callable[[], duckdb.DuckDBPyConnection] = (
            con if callable(con) else (lambda: con)  # type: ignore[assignment,return-value]
        )
        self.path = path  # where to reopen it (another process, a Ray worker); None: in memory
        self._seq_filter = None if seq_ids is None else [int(x) for x in seq_ids]
        self.run_id = run_id
        con = self._get_con()
        cap_read_memory(con)
        self._capped = con
        self.phase = check_phase(phase)
        self.labels = None if labels is None else [str(x) for x in labels]
        rows = con.execute(
            "SELECT num_experts, top_k, model_id, moe_layers, coalesce(has_weights, true), config "
            "FROM runs WHERE run_id = ?",
            [run_id],
        ).fetchall()
        if not rows:
            raise StoreError(f"no run {run_id!r} in this store")
        num_experts, top_k, model_id, moe_layers, has_weights, config = rows[0]
        spec_shape = con.execute(
            "SELECT coalesce(max(distance), 0), coalesce(max(len(experts)), 0) "
            "FROM speculative_routes WHERE run_id = ?",
            [run_id],
        ).fetchall()[0]
        meta: dict[str, Any] = {}
        cfg = (json.loads(config) if isinstance(config, str) else config) or {}
        if isinstance(cfg, dict) and cfg.get("batch_size"):
            meta["batch_size"] = int(cfg["batch_size"])
        if isinstance(cfg, dict) and cfg.get("load_only"):
            raise InvalidParameterError(
                f"run {run_id} is load-only (per-expert counts from a {cfg.get('import_format', 'stat')} "
                "dump, no per-token routing): only the load analysis applies "
                f"(`routescope analyze specialization {run_id}`)"
            )
        has_token_ids = not (isinstance(cfg, dict) and cfg.get("has_token_ids") is False)
        present = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT label FROM sequences WHERE run_id = ? AND label IS NOT NULL",
                [run_id],
            ).fetchall()
        ]
        if self.labels is not None:
            missing = [lab for lab in self.labels if lab not in present]
            if missing:
                raise InvalidParameterError(
                    f"label(s) {missing} not in run {run_id}; labels are {sorted(present)}"
                )
        where = ["s.run_id = $run"]
        params: dict[str, Any] = {"run": run_id}
        if self.labels is not None:
            where.append("list_contains($labels, s.label)")
            params["labels"] = self.labels
        if seq_ids is not None:
            where.append("list_contains($seqs, s.seq_id)")
            params["seqs"] = [int(x) for x in seq_ids]
        tok_phase = "" if self.phase == "all" else "AND t.phase = $phase"
        if self.phase != "all":
            params["phase"] = self.phase
        seqs = con.sql(
            f"""SELECT s.seq_id, s.label, s.prompt_set, s.prompt_id, n.n
            FROM sequences s JOIN (
                SELECT t.seq_id, count(*) AS n FROM tokens t
                WHERE t.run_id = $run {tok_phase} GROUP BY t.seq_id) n USING (seq_id)
            WHERE {" AND ".join(where)} ORDER BY s.seq_id""",
            params=params,
        ).to_arrow_table()
        self._seq_ids = seqs.column("seq_id").to_numpy().astype(np.int64)
        self._lengths = seqs.column("n").to_numpy().astype(np.int64)
        self._labels = _objects(seqs.column("label"))
        self._prompt_sets = _objects(seqs.column("prompt_set"))
        self._prompt_ids = _objects(seqs.column("prompt_id"))
        sel_labels = sorted({str(x) for x in self._labels.tolist() if x is not None})
        sets = sorted({str(x) for x in self._prompt_sets.tolist() if x is not None})
        self._info = SourceInfo(
            num_experts=int(num_experts),
            top_k=int(top_k),
            layers=tuple(int(x) for x in moe_layers),
            num_sequences=len(self._seq_ids),
            num_tokens=int(self._lengths.sum()),
            labels=tuple(sel_labels),
            prompt_sets=tuple(sets),
            has_weights=bool(has_weights),
            has_token_ids=has_token_ids,
            speculative_distances=int(spec_shape[0]),
            speculative_width=int(spec_shape[1]),
            run_id=run_id,
            model_id=model_id,
            phase=self.phase,
            meta=meta,
        )

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection it reads through (the store's current one)."""
        return self._get_con()

    @property
    def info(self) -> SourceInfo:
        return self._info

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as where to reopen it: a Ray worker reads the same file or Parquet dataset."""
        if self.path is None:
            raise StoreError(
                "this source reads an in-memory store, which another process cannot open; "
                "write the run to a DuckDB file or export it (`routescope export RUN --parquet DIR`)"
            )
        return open_source, (self.path, self.run_id, self.phase, self.labels, self._seq_filter)

    @property
    def seq_ids(self) -> np.ndarray:
        """int64[S]: the stored seq_id of each sequence, in source order."""
        return self._seq_ids

    def seq_lengths(self) -> np.ndarray:
        return self._lengths

    def select(self, *, phase: str = "all", labels: Sequence[str] | None = None) -> StoreSource:
        """This run narrowed further (phase 'all' keeps this source's phase)."""
        if phase != "all" and self.phase not in ("all", phase):
            raise InvalidParameterError(
                f"this source holds {self.phase} tokens only; it has no {phase} tokens"
            )
        if labels is not None and self.labels is not None:
            outside = [lab for lab in labels if lab not in self.labels]
            if outside:
                raise InvalidParameterError(
                    f"label(s) {outside} are outside this selection ({self.labels})"
                )
        return StoreSource(
            self._get_con,
            self.run_id,
            phase=phase if phase != "all" else self.phase,
            labels=labels if labels is not None else self.labels,
            seq_ids=self._seq_filter,
            path=self.path,
        )

    def chunks(
        self,
        *,
        layers: Sequence[int] | None = None,
        max_rows: int = DEFAULT_CHUNK_ROWS,
        align: int = 1,
        seq_range: tuple[int, int] | None = None,
        with_speculative: bool = False,
        with_weights: bool = True,
    ) -> Iterator[Trace]:
        sel = self._info.check_layers(layers)
        start, stop = seq_range if seq_range is not None else (0, len(self._seq_ids))
        for lo, hi in plan_chunks(self._lengths[start:stop], len(sel), max_rows, align):
            yield self.read(start + lo, start + hi, sel, with_speculative, with_weights)

    def read(
        self,
        start: int,
        stop: int,
        layers: Sequence[int] | None = None,
        with_speculative: bool = False,
        with_weights: bool = True,
    ) -> Trace:
        """Sequences start..stop-1 (source order) with `layers` (all by default) as a Trace;
        `with_weights=False` leaves the gate weights unread (the Trace has none)."""
        sel = self._info.check_layers(layers)
        ids = self._seq_ids[start:stop]
        n_lay = len(sel)
        k = self._info.top_k
        lengths = self._lengths[start:stop]
        n_tok = int(lengths.sum())
        if len(ids) == 0:
            return self._trace(start, stop, sel, np.zeros((0, n_lay, k), np.int16), None, {})
        if self.con is not self._capped:  # the store reopened its connection
            cap_read_memory(self.con)
            self._capped = self.con
        params: dict[str, Any] = {"run": self.run_id, "lo": int(ids[0]), "hi": int(ids[-1])}
        # ids are sorted: a contiguous range needs no list of them (a label selection does)
        contiguous = int(ids[-1]) - int(ids[0]) + 1 == len(ids)
        in_chunk = "seq_id BETWEEN $lo AND $hi"
        if not contiguous:
            in_chunk += " AND seq_id IN (SELECT seq_id FROM _rs_chunk_seqs)"
            self.con.register("_rs_chunk_seqs", pa.table({"seq_id": pa.array(ids)}))
        by_layer = ""
        if set(sel) != set(self._info.layers):
            by_layer = " AND list_contains($layers, layer)"
            params["layers"] = list(sel)
        read_weights = with_weights and self._info.has_weights
        # fixed-size lists: DuckDB checks every list's length, numpy gets the values as they are
        cols = f"seq_id, pos, layer, CAST(experts AS USMALLINT[{k}]) AS experts"
        if read_weights:
            cols += f", CAST(weights AS FLOAT[{k}]) AS weights"
        try:
            toks = self.con.sql(
                f"SELECT seq_id, pos, token_id, coalesce(phase = $decode, false) AS decode, "
                f"coalesce(in_target, false) AS in_target FROM tokens "
                f"WHERE run_id = $run AND {in_chunk}",
                params={**{k_: params[k_] for k_ in ("run", "lo", "hi")}, "decode": PHASES[1]},
            ).to_arrow_table()
            routes = self.con.sql(
                f"SELECT {cols} FROM routes WHERE run_id = $run AND {in_chunk}{by_layer}",
                params=params,
            ).to_arrow_table()
            spec_rows = None
            if with_speculative and self._info.speculative_distances:
                spec_rows = self.con.sql(
                    f"SELECT seq_id, pos, layer, distance, experts FROM speculative_routes "
                    f"WHERE run_id = $run AND {in_chunk}{by_layer}",
                    params=params,
                ).to_arrow_table()
        except duckdb.ConversionException:
            raise StoreError(
                f"a stored list has a length other than {k}; the run is inconsistent"
            ) from None
        finally:
            if not contiguous:
                self.con.unregister("_rs_chunk_seqs")
        # tokens in (sequence, position) order (as a clustered store holds them: no sort then)
        t_seq = toks.column("seq_id").to_numpy().astype(np.int64)
        t_pos = toks.column("pos").to_numpy().astype(np.int64)
        t_key = t_seq << 32 | t_pos
        order: np.ndarray | slice = slice(None)
        if not np.all(t_key[1:] > t_key[:-1]):
            order = np.lexsort((t_pos, t_seq))
            t_key = t_key[order]
        phase = toks.column("decode").to_numpy(zero_copy_only=False).astype(np.uint8)[order]
        n_all = len(t_key)
        lay_col = np.full(int(max(self._info.layers, default=0)) + 1, -1, dtype=np.int64)
        lay_col[list(sel)] = np.arange(n_lay)
        place = _placement(routes, t_key, lay_col, n_lay)
        if place is None:
            raise StoreError(
                f"run {self.run_id} is inconsistent: {routes.num_rows} route rows for {n_all} "
                f"tokens x {n_lay} layers; re-collect it into a new database"
            )
        experts = _fill(
            _fixed_values(routes.column("experts"), k, np.int16), place, n_all, n_lay, k
        )
        if experts is None:
            raise StoreError(f"run {self.run_id} is inconsistent: a stored expert list is NULL")
        weights = None
        if read_weights:
            parts = _fixed_values(routes.column("weights"), k, np.float32)
            weights = None if parts is None else _fill(parts, place, n_all, n_lay, k)
        speculative = None
        if spec_rows is not None:
            speculative = self._speculative(spec_rows, t_key, lay_col, n_all, n_lay)
        extra = {
            "token_ids": toks.column("token_id").fill_null(-1).to_numpy().astype(np.int64)[order],
            "positions": t_pos[order].astype(np.int32),
            "in_target": toks.column("in_target").to_numpy(zero_copy_only=False)[order],
            "phase": phase,
        }
        if self.phase != "all":  # keep only this source's phase
            keep = phase == PHASES.index(self.phase)
            if not keep.all():
                experts = experts[keep]
                weights = None if weights is None else weights[keep]
                speculative = None if speculative is None else speculative[keep]
                extra = {name: arr[keep] for name, arr in extra.items()}
        if len(experts) != n_tok:
            raise StoreError(
                f"run {self.run_id} changed while it was read ({len(experts)} token rows, "
                f"expected {n_tok}); read it again once the job has committed"
            )
        return self._trace(start, stop, sel, experts, weights, extra, speculative)

    def _speculative(
        self, rows: pa.Table, t_key: np.ndarray, lay_col: np.ndarray, n_tok: int, n_lay: int
    ) -> np.ndarray:
        """int16[N, L, D, m] from speculative_routes rows (any physical order)."""
        d_max, m = self._info.speculative_distances, self._info.speculative_width
        r_key = rows.column("seq_id").to_numpy().astype(np.int64) << 32 | rows.column(
            "pos"
        ).to_numpy().astype(np.int64)
        tok = np.searchsorted(t_key, r_key)
        lay = lay_col[rows.column("layer").to_numpy().astype(np.int64)]
        dist = rows.column("distance").to_numpy().astype(np.int64) - 1
        out = np.full((n_tok, n_lay, d_max, m), -1, dtype=np.int16)
        out[tok, lay, dist] = list_column_to_numpy(rows.column("experts"), np.int16, m).reshape(
            -1, m
        )
        return out

    def _trace(
        self,
        start: int,
        stop: int,
        layers: tuple[int, ...],
        experts: np.ndarray,
        weights: np.ndarray | None,
        extra: dict[str, np.ndarray],
        speculative: np.ndarray | None = None,
    ) -> Trace:
        lengths = self._lengths[start:stop]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return Trace(
            experts=experts,
            weights=weights,
            seq_offsets=offsets,
            num_experts=self._info.num_experts,
            top_k=self._info.top_k,
            layers=layers,
            labels=self._labels[start:stop],
            seq_ids=self._seq_ids[start:stop],
            prompt_sets=self._prompt_sets[start:stop],
            prompt_ids=self._prompt_ids[start:stop],
            run_id=self.run_id,
            model_id=self._info.model_id,
            meta=dict(self._info.meta),
            speculative=speculative,
            **extra,
        )


def open_source(
    path: str,
    run_id: str,
    phase: str = "all",
    labels: Sequence[str] | None = None,
    seq_ids: Sequence[int] | None = None,
) -> StoreSource:
    """A run of the store at `path` (DuckDB file, read-only, or Parquet export) as a source; the
    connection lives as long as the source."""
    from routescope.store.dataset import connect_store

    return StoreSource(
        connect_store(path, read_only=True),
        run_id,
        phase=phase,
        labels=labels,
        seq_ids=seq_ids,
        path=path,
    )
