"""Merging stores: shards (DuckDB files or Parquet part dirs) and Ray chunks into one DuckDB file.

A job's sequence ids are the global prompt-order index, so any split of the ids can be collected
anywhere and merged without remapping: the run's row once (shards must agree on model, shape and
config), the other tables unioned, a sequence stored twice refused, status 'complete' only when
every sequence of the job is there. Everything is checked before anything is written, and all is
written in one transaction, so a refused or failed merge leaves the output unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from routescope.core.canonical import canonical_json
from routescope.core.errors import StoreError
from routescope.store.layout import finish_runs
from routescope.store.schema import JOB_SIZE_PREFIX
from routescope.store.writer import RUN_TABLES

#: Small tables unioned as they are.
SHARED_TABLES = ("steering_presets", "expert_notes")
#: `runs` columns every shard of a run must agree on.
_AGREE = (
    "name",
    "model_id",
    "model_revision",
    "family",
    "num_layers",
    "moe_layers",
    "num_experts",
    "top_k",
    "num_shared_experts",
    "norm_topk_prob",
    "dtype",
    "steering_id",
    "config",
)


class MergeError(StoreError):
    """Shards cannot be merged as given."""


@dataclass
class MergeResult:
    """What a merge did, per run: sequences added, stored after, the job's size, status after."""

    out: str
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def sequences(self) -> int:
        return sum(r["sequences"] for r in self.runs.values())


def _runs_rows(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, Any]]:
    cur = con.execute("SELECT * FROM runs")
    cols = [d[0] for d in cur.description]
    out = {}
    for row in cur.fetchall():
        rec = dict(zip(cols, row, strict=True))
        out[str(rec["run_id"])] = rec
    return out


def _norm(key: str, value: Any) -> Any:
    if key == "config" and isinstance(value, str):
        return canonical_json(json.loads(value))
    if key == "moe_layers" and value is not None:
        return [int(x) for x in value]
    return value


def _job_sizes(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = con.execute(
        "SELECT key, value FROM meta WHERE starts_with(key, ?)", [JOB_SIZE_PREFIX]
    ).fetchall()
    return {k.removeprefix(JOB_SIZE_PREFIX): int(json.loads(v)["sequences"]) for k, v in rows}


def _seq_ids(con: duckdb.DuckDBPyConnection) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for rid, sid in con.execute("SELECT run_id, seq_id FROM sequences").fetchall():
        out.setdefault(str(rid), set()).add(int(sid))
    return out


def merge_sources(
    out: Any,
    sources: Sequence[tuple[str, duckdb.DuckDBPyConnection]],
    progress: Callable[[str], None] | None = None,
    cluster: bool = True,
) -> MergeResult:
    """Merge stores opened as DuckDB connections (name, con) into the writable `RoutingStore` out.

    Everything is checked before anything is written (runs agree, no sequence twice); then all is
    written in one transaction, so a refused or failed merge leaves `out` unchanged.
    """
    from routescope.store.dataset import schema_columns

    ocon = out.con
    names = [name for name, _ in sources]
    runs_by_src = [_runs_rows(con) for _, con in sources]
    seqs_by_src = [_seq_ids(con) for _, con in sources]
    sizes_by_src = [_job_sizes(con) for _, con in sources]
    out_runs, out_seqs, out_sizes = _runs_rows(ocon), _seq_ids(ocon), _job_sizes(ocon)

    run_ids = sorted({rid for rows in runs_by_src for rid in rows})
    for i, rows in enumerate(seqs_by_src):
        orphan = sorted(set(rows) - set(runs_by_src[i]))
        if orphan:
            raise MergeError(
                f"{names[i]} has sequences of run(s) {orphan} but no runs row for them; it is not a complete store"
            )
    result = MergeResult(out=out.path)
    plan: dict[str, dict[str, Any]] = {}
    for rid in run_ids:
        holders = [(names[i], rows[rid]) for i, rows in enumerate(runs_by_src) if rid in rows]
        if rid in out_runs:
            holders.insert(0, (out.path, out_runs[rid]))
        first_name, first = holders[0]
        for other_name, other in holders[1:]:
            diff = [k for k in _AGREE if _norm(k, first.get(k)) != _norm(k, other.get(k))]
            if diff:
                raise MergeError(
                    f"run {rid} differs between {first_name} and {other_name} in "
                    f"{', '.join(diff)}; merge only shards of the same job"
                )
        owner: dict[int, str] = {s: out.path for s in out_seqs.get(rid, set())}
        for i, seqs in enumerate(seqs_by_src):
            for s in sorted(seqs.get(rid, set())):
                if s in owner:
                    raise MergeError(
                        f"sequence {s} of run {rid} is in both {owner[s]} and {names[i]}; "
                        "each sequence must come from one shard, so leave one of them out"
                    )
                owner[s] = names[i]
        sizes = {src[rid] for src in (*sizes_by_src, out_sizes) if rid in src}
        if len(sizes) > 1:
            raise MergeError(f"the shards of run {rid} disagree on the job size {sorted(sizes)}")
        total = sizes.pop() if sizes else None
        have = set(owner)
        if total is not None:
            status = "complete" if have == set(range(total)) else "partial"
        else:  # stores from before job sizes were recorded: trust their statuses
            statuses = {h[1].get("status") for h in holders}
            status = "complete" if statuses == {"complete"} else "partial"
        added = len(have) - len(out_seqs.get(rid, set()))
        plan[rid] = {"row": first, "total": total, "status": status, "new": rid not in out_runs}
        result.runs[rid] = {
            "sequences": added,
            "stored": len(have),
            "total": total,
            "status": status,
        }

    cols = schema_columns()
    run_cols = [c for c, _ in cols["runs"]]
    ocon.execute("BEGIN TRANSACTION")
    try:
        for rid, p in plan.items():
            if p["new"]:
                row = p["row"]
                values = [
                    canonical_json(row[c])
                    if c in ("config", "versions") and isinstance(row[c], dict)
                    else row[c]
                    for c in run_cols
                ]
                ocon.execute(
                    f"INSERT INTO runs ({', '.join(run_cols)}) VALUES ({', '.join('?' * len(run_cols))})",
                    values,
                )
            # rows are added: the run is clustered again by finish_runs
            ocon.execute(
                "UPDATE runs SET status = ?, layout = NULL WHERE run_id = ?", [p["status"], rid]
            )
            if p["total"] is not None:
                ocon.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [JOB_SIZE_PREFIX + rid, canonical_json({"sequences": p["total"]})],
                )
            ocon.execute("DELETE FROM analysis_results WHERE run_id = ?", [rid])
        for name, con in sources:
            for table in (*RUN_TABLES, *SHARED_TABLES):
                if progress is not None:
                    progress(f"{name}: {table}")
                present = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
                use = [c for c, _ in cols[table] if c in present]
                sel = ", ".join(use)
                reader = con.sql(f"SELECT {sel} FROM {table}").to_arrow_reader(65_536)
                ocon.register("_rs_part", reader)
                verb = "INSERT OR IGNORE" if table in SHARED_TABLES else "INSERT"
                ocon.execute(f"{verb} INTO {table} ({sel}) SELECT {sel} FROM _rs_part")
                ocon.unregister("_rs_part")
        ocon.execute("COMMIT")
    except BaseException:
        ocon.execute("ROLLBACK")
        raise
    if cluster:  # a caller merging many chunks into one run clusters it once at the end
        finish_runs(ocon, list(plan))  # a file output is compacted once for all its runs
    return result


def open_source(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A shard (DuckDB file or Parquet parts dir) as a read-only DuckDB connection."""
    from routescope.store.dataset import connect_store

    return connect_store(path, read_only=True)


def merge_stores(
    out: str | Path, parts: Sequence[str | Path], quiet: bool = False, lock_timeout: float = 60.0
) -> MergeResult:
    """`routescope merge OUT PART…`: bring shards (DuckDB files or Parquet dirs) into OUT."""
    from rich.progress import Progress

    from routescope.store.store import RoutingStore

    if not parts:
        raise MergeError("nothing to merge: give one or more shard files or Parquet dirs")
    out_res = Path(out).resolve()
    seen: set[Path] = set()
    for part in parts:
        p = Path(part).resolve()
        if p == out_res:
            raise MergeError(f"{part} is the output itself; merge shards into another file")
        if p in seen:
            raise MergeError(f"{part} is given twice; list each shard once")
        seen.add(p)
        if not p.exists():
            raise MergeError(f"no shard at {part}; give DuckDB files or Parquet part dirs")
    if Path(out).is_dir():
        raise MergeError(f"{out} is a directory; the merge output is a DuckDB file")
    sources = [(str(p), open_source(p)) for p in parts]
    try:
        with (
            RoutingStore(out, lock_timeout=lock_timeout) as store,
            Progress(disable=quiet, transient=True) as bar,
        ):
            task = bar.add_task(
                "merge", total=len(sources) * (len(RUN_TABLES) + len(SHARED_TABLES))
            )

            def step(what: str) -> None:
                bar.update(task, advance=1, description=f"merge {what}")

            return merge_sources(store, sources, progress=step)
    finally:
        for _, con in sources:
            con.close()


def tables_source(tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """Arrow tables of a store (e.g. a Ray chunk's) as an in-memory store, the form
    `merge_sources` reads."""
    from routescope.store.schema import DDL
    from routescope.store.writer import insert_arrow

    con = duckdb.connect(":memory:")
    con.execute(DDL)
    for table, tbl in tables.items():
        insert_arrow(
            con, table, tbl, "INSERT OR REPLACE" if table in ("runs", "meta") else "INSERT"
        )
    return con
