"""Collection that scales out: shards of a job, Parquet part stores, merging, and a Ray driver.

A job's sequence ids are the global prompt-order index, so any split of the ids can be collected
anywhere and merged without remapping:
- `--shard i/n` collects the ids with seq_id % n == i into its own DuckDB file or Parquet parts dir;
- `merge_stores(OUT, PARTS)` brings shards (DuckDB files or Parquet dirs) into one store: the run's
  row once (shards must agree on model, shape and config), the other tables unioned, a sequence
  stored twice refused, status 'complete' only when every sequence of the job is there;
- `run_ray(job)` splits the job into chunks over Ray actors (each loads the model once); each chunk
  comes back as Arrow tables and is merged into the job's store with the same merge code.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from routescope.core.errors import RoutescopeError

#: Tables that hold a run's routing (merged by run) and small tables unioned as they are.
RUN_TABLES = ("sequences", "tokens", "routes", "router_probs")
SHARED_TABLES = ("steering_presets", "expert_notes")
_KEYS = {
    "sequences": "seq_id",
    "tokens": "seq_id, pos",
    "routes": "seq_id, pos, layer",
    "router_probs": "seq_id, pos, layer",
}
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
_JOB_SIZE_PREFIX = "job_sequences:"


class ScaleOutError(RoutescopeError):
    """A shard option, a merge or a Ray collection cannot proceed as asked."""


# ---- steering presets travel with the job -----------------------------------------------------
def job_presets(job: Any) -> pa.Table | None:
    """The steering preset a job names, read from the job's own store (None when the job's
    steering is a spec file or absent), so a shard or a Ray worker resolves it as the job would."""
    ref = job.steering
    if ref is None or Path(ref).suffix.lower() in (".toml", ".json") or Path(ref).is_file():
        return None
    if not Path(job.db).is_file():
        return None  # resolving it then fails with the presets module's own clear line
    from routescope.store.dataset import connect_store

    con = connect_store(job.db)
    try:
        return con.sql(
            "SELECT * FROM steering_presets WHERE name = $ref OR preset_id = $ref",
            params={"ref": ref},
        ).to_arrow_table()
    finally:
        con.close()


def install_presets(con: duckdb.DuckDBPyConnection, presets: pa.Table | None) -> None:
    """Add the job's preset rows to a store the shard writes (kept if already there)."""
    if presets is None or presets.num_rows == 0:
        return
    con.register("_rs_presets", presets)
    cols = ", ".join(presets.column_names)
    con.execute(f"INSERT OR IGNORE INTO steering_presets ({cols}) SELECT {cols} FROM _rs_presets")
    con.unregister("_rs_presets")


# ---- shards -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the sequences with seq_id % count == index."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'i/n' → Shard(i, n), with 0 <= i < n."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise ScaleOutError(
                f"--shard {text!r} is not 'i/n' with 0 <= i < n (e.g. --shard 0/2 and --shard 1/2)"
            )
        return cls(int(m.group(1)), int(m.group(2)))

    def __call__(self, seq_id: int) -> bool:
        return seq_id % self.count == self.index

    def default_db(self, db: str) -> str:
        """The shard's own DuckDB file beside the job's: <stem>.shard-i-of-n.duckdb."""
        p = Path(db)
        return str(
            p.with_name(f"{p.stem}.shard-{self.index}-of-{self.count}{p.suffix or '.duckdb'}")
        )


# ---- Parquet parts store ----------------------------------------------------------------------
def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ParquetPartsStore:
    """A writable store whose commits are Parquet files under a directory (hive layout of export).

    Each committed group of sequences becomes one file per table partition named by a fresh part
    token; the sequences file is written last (by rename), so a part without one is an unfinished
    write: it is deleted when the directory is opened again. `connect_store(DIR)` reads it back.
    Batches are converted by an in-memory `RoutingStore`, the same code as DuckDB writes.
    """

    def __init__(self, directory: str | Path) -> None:
        from routescope.store.store import CollectionLock, RoutingStore

        self.root = Path(directory)
        self.path = str(self.root)
        self.read_only = False
        self.root.mkdir(parents=True, exist_ok=True)
        # one writer per directory: another's unfinished part must not look abandoned
        self._lock = CollectionLock(self.root / ".collect-lock", self.path)
        self._remove_unfinished()
        self.mem = RoutingStore(":memory:")
        self.con = self.mem.con
        for table in ("runs", "meta"):
            files = sorted(self.root.glob(f"{table}/**/*.parquet")) + sorted(
                self.root.glob(f"{table}.parquet")
            )
            if files:
                cols = [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall()]
                src = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
                scan = f"read_parquet({src}, hive_partitioning = true, union_by_name = true)"
                present = {
                    r[0] for r in self.con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()
                }
                use = [c for c in cols if c in present]
                self.con.execute(
                    f"INSERT OR REPLACE INTO {table} ({', '.join(use)}) "
                    f"SELECT {', '.join(use)} FROM {scan}"
                )

    def _remove_unfinished(self) -> None:
        done = {f.stem for f in self.root.glob("sequences/**/*.parquet")}
        for table in RUN_TABLES[1:]:
            for f in self.root.glob(f"{table}/**/*.parquet"):
                if f.stem.split("_")[0] not in done:
                    f.unlink()
        for f in self.root.glob("sequences/**/*.tmp"):
            f.unlink()

    def open(self) -> ParquetPartsStore:  # pragma: no cover - symmetry with IntermittentStore
        return self

    def close(self) -> None:
        self.mem.close()
        self._lock.release()

    def __enter__(self) -> ParquetPartsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_small(self, run_id: str | None = None) -> None:
        """Rewrite the runs row(s) and meta as files (tiny; done when they change)."""
        runs = (
            [run_id]
            if run_id
            else [r[0] for r in self.con.execute("SELECT run_id FROM runs").fetchall()]
        )
        for rid in runs:
            d = self.root / "runs" / f"run_id={rid}"
            d.mkdir(parents=True, exist_ok=True)
            tmp = d / "run.parquet.tmp"
            self.con.execute(
                f"COPY (SELECT * EXCLUDE (run_id) FROM runs WHERE run_id = ?) TO {_sql_str(str(tmp))} "
                "(FORMAT parquet)",
                [rid],
            )
            os.replace(tmp, d / "run.parquet")
        tmp = self.root / "meta.parquet.tmp"
        self.con.execute(f"COPY meta TO {_sql_str(str(tmp))} (FORMAT parquet)")
        os.replace(tmp, self.root / "meta.parquet")

    def create_or_resume_run(self, run_id: str, **kwargs: Any) -> bool:
        existed = self.mem.create_or_resume_run(run_id, **kwargs)
        self._write_small(run_id)
        return existed

    def set_status(self, run_id: str, status: str) -> None:
        self.mem.set_status(run_id, status)
        self._write_small(run_id)

    def set_meta(self, key: str, value: Any) -> None:
        self.mem.set_meta(key, value)
        self._write_small()

    def stored_seq_ids(self, run_id: str) -> set[int]:
        files = list((self.root / "sequences" / f"run_id={run_id}").glob("*.parquet"))
        if not files:
            return set()
        src = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
        rows = duckdb.sql(f"SELECT seq_id FROM read_parquet({src})").fetchall()
        return {int(r[0]) for r in rows}

    def write_batch(self, run_id: str, *args: Any, **kwargs: Any) -> int:
        """Convert with the in-memory store, then write one file per partition of each table."""
        con = self.con
        for table in RUN_TABLES:
            con.execute(f"DELETE FROM {table}")
        rows = self.mem.write_batch(run_id, *args, **kwargs)
        token = uuid.uuid4().hex
        for table in ("router_probs", "routes", "tokens"):
            if con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0] == 0:
                continue
            parts = "run_id, layer" if table in ("routes", "router_probs") else "run_id"
            con.execute(
                f"COPY (SELECT * FROM {table} ORDER BY {_KEYS[table]}) TO "
                f"{_sql_str(str(self.root / table))} (FORMAT parquet, PARTITION_BY ({parts}), "
                f"FILENAME_PATTERN '{token}_{{i}}', OVERWRITE_OR_IGNORE)"
            )
        d = self.root / "sequences" / f"run_id={run_id}"
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{token}.tmp"
        con.execute(
            f"COPY (SELECT * EXCLUDE (run_id) FROM sequences ORDER BY seq_id) TO "
            f"{_sql_str(str(tmp))} (FORMAT parquet)"
        )
        os.replace(tmp, d / f"{token}.parquet")  # the commit
        for table in RUN_TABLES:
            con.execute(f"DELETE FROM {table}")
        return rows


# ---- merge ------------------------------------------------------------------------------------
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
    from routescope.store.store import canonical_json

    if key == "config" and isinstance(value, str):
        import json

        return canonical_json(json.loads(value))
    if key == "moe_layers" and value is not None:
        return [int(x) for x in value]
    return value


def _job_sizes(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    import json

    rows = con.execute(
        "SELECT key, value FROM meta WHERE starts_with(key, ?)", [_JOB_SIZE_PREFIX]
    ).fetchall()
    return {k.removeprefix(_JOB_SIZE_PREFIX): int(json.loads(v)["sequences"]) for k, v in rows}


def _seq_ids(con: duckdb.DuckDBPyConnection) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for rid, sid in con.execute("SELECT run_id, seq_id FROM sequences").fetchall():
        out.setdefault(str(rid), set()).add(int(sid))
    return out


def merge_sources(
    out: Any,
    sources: Sequence[tuple[str, duckdb.DuckDBPyConnection]],
    progress: Callable[[str], None] | None = None,
) -> MergeResult:
    """Merge stores opened as DuckDB connections (name, con) into the writable `RoutingStore` out.

    Everything is checked before anything is written (runs agree, no sequence twice); then all is
    written in one transaction, so a refused or failed merge leaves `out` unchanged.
    """
    from routescope.store.dataset import schema_columns
    from routescope.store.store import canonical_json

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
            raise ScaleOutError(
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
                raise ScaleOutError(
                    f"run {rid} differs between {first_name} and {other_name} in "
                    f"{', '.join(diff)}; merge only shards of the same job"
                )
        owner: dict[int, str] = {s: out.path for s in out_seqs.get(rid, set())}
        for i, seqs in enumerate(seqs_by_src):
            for s in sorted(seqs.get(rid, set())):
                if s in owner:
                    raise ScaleOutError(
                        f"sequence {s} of run {rid} is in both {owner[s]} and {names[i]}; "
                        "each sequence must come from one shard, so leave one of them out"
                    )
                owner[s] = names[i]
        sizes = {src[rid] for src in (*sizes_by_src, out_sizes) if rid in src}
        if len(sizes) > 1:
            raise ScaleOutError(f"the shards of run {rid} disagree on the job size {sorted(sizes)}")
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
            ocon.execute("UPDATE runs SET status = ? WHERE run_id = ?", [p["status"], rid])
            if p["total"] is not None:
                ocon.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    [_JOB_SIZE_PREFIX + rid, canonical_json({"sequences": p["total"]})],
                )
            ocon.execute("DELETE FROM analysis_cache WHERE run_id = ?", [rid])
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
        raise ScaleOutError("nothing to merge: give one or more shard files or Parquet dirs")
    out_res = Path(out).resolve()
    seen: set[Path] = set()
    for part in parts:
        p = Path(part).resolve()
        if p == out_res:
            raise ScaleOutError(f"{part} is the output itself; merge shards into another file")
        if p in seen:
            raise ScaleOutError(f"{part} is given twice; list each shard once")
        seen.add(p)
        if not p.exists():
            raise ScaleOutError(f"no shard at {part}; give DuckDB files or Parquet part dirs")
    if Path(out).is_dir():
        raise ScaleOutError(f"{out} is a directory; the merge output is a DuckDB file")
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


# ---- Ray --------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ScaleOutError(
            "--ray needs the ray package: pip install 'routescope[ray]' (or pip install ray)"
        ) from None
    return ray


def collect_chunk(
    job: Any,
    lm: Any,
    prompts: list[Any],
    seq_ids: Sequence[int],
    presets: pa.Table | None = None,
) -> dict[str, pa.Table]:
    """Collect some of a job's sequences into memory; returns the store's tables as Arrow."""
    from routescope.collect.runner import run_job
    from routescope.store.store import RoutingStore

    keep = set(seq_ids)
    with RoutingStore(":memory:") as mem:
        install_presets(mem.con, presets)
        run_job(
            job,
            quiet=True,
            lm=lm,
            store=mem,
            select=keep.__contains__,
            prompts=prompts,
            flush_rows=1 << 62,
            flush_seconds=math.inf,
        )
        return {t: mem._arrow(f"SELECT * FROM {t}") for t in ("runs", "meta", *RUN_TABLES)}


def tables_source(tables: dict[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """Arrow tables of a chunk as an in-memory store (the form `merge_sources` reads)."""
    from routescope.store.schema import DDL

    con = duckdb.connect(":memory:")
    con.execute(DDL)
    for table, tbl in tables.items():
        con.register("_rs_in", tbl)
        sel = ", ".join(tbl.column_names)
        verb = "INSERT OR REPLACE" if table in ("runs", "meta") else "INSERT"
        con.execute(f"{verb} INTO {table} ({sel}) SELECT {sel} FROM _rs_in")
        con.unregister("_rs_in")
    return con


class _Worker:
    """A Ray actor body: loads the job's model once, then collects chunks of sequence ids."""

    def __init__(
        self, job: Any, prompts: list[Any], presets: pa.Table | None, threads: int
    ) -> None:
        import torch

        from routescope.collect.runner import load_job_model

        torch.set_num_threads(max(1, threads))
        self.job, self.prompts, self.presets = job, prompts, presets
        self.lm = load_job_model(job, quiet=True)

    def collect(self, seq_ids: list[int]) -> dict[str, pa.Table]:
        return collect_chunk(self.job, self.lm, self.prompts, seq_ids, self.presets)


def run_ray(
    job: Any,
    *,
    address: str | None = None,
    workers: int = 2,
    quiet: bool = False,
    chunk_size: int | None = None,
    lock_timeout: float = 300.0,
) -> Any:
    """Collect the job on a Ray cluster into job.db; resumable (stored sequences are skipped).

    The prompt ids not yet stored are cut into chunks handed to `workers` actors (one model load
    each, a GPU each when the job's device is cuda); each finished chunk is merged into the store
    at once (holding its lock only then), so an interrupted job keeps every merged chunk.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from routescope.collect.runner import CollectionInterrupted, RunResult, read_job_prompts
    from routescope.store.store import IntermittentStore, RoutingStore

    if workers < 1:
        raise ScaleOutError(f"--workers must be at least 1, got {workers}")
    ray = _import_ray()
    prompts = read_job_prompts(job)
    total = len(prompts)
    run_id = job.run_id
    stored: set[int] = set()
    target = IntermittentStore(job.db, lock_timeout=lock_timeout)  # one collection per store
    if Path(job.db).exists():
        try:
            with RoutingStore(job.db, read_only=True, lock_timeout=lock_timeout) as st:
                if st._one("SELECT 1 FROM runs WHERE run_id = ?", [run_id]) is not None:
                    stored = st.stored_seq_ids(run_id)
        except BaseException:
            target.close()
            raise
    todo = [i for i in range(total) if i not in stored]
    started_ray = False
    start = time.perf_counter()
    written = tokens = rows = 0
    status = "complete"
    try:
        if todo and not ray.is_initialized():
            level = logging.ERROR if quiet else logging.WARNING
            ray.init(
                address=address, include_dashboard=False, log_to_driver=False, logging_level=level
            )
            started_ray = True
        if todo:
            size = chunk_size or max(job.batch_size, math.ceil(len(todo) / (workers * 8)))
            chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
            gpu = 1 if str(job.device).startswith("cuda") else 0
            actor_cls = ray.remote(_Worker).options(num_cpus=1, num_gpus=gpu)
            threads = max(1, int(os.environ.get("ROUTESCOPE_WORKER_THREADS", "1")))
            presets = job_presets(job)
            actors = [
                actor_cls.remote(job, prompts, presets, threads)
                for _ in range(min(workers, len(chunks)))
            ]
            queue = list(reversed(chunks))
            pending: dict[Any, tuple[Any, list[int]]] = {}
            for actor in actors:
                if queue:
                    chunk = queue.pop()
                    pending[actor.collect.remote(chunk)] = (actor, chunk)
            progress = Progress(
                TextColumn("[bold]collect (ray)[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                disable=quiet,
            )
            with progress:
                task = progress.add_task(run_id, total=total, completed=len(stored))
                while pending:
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    actor, chunk = pending.pop(ready[0])
                    tables = ray.get(ready[0])
                    if queue:
                        nxt = queue.pop()
                        pending[actor.collect.remote(nxt)] = (actor, nxt)
                    src = tables_source(tables)
                    try:
                        with target.open() as store:
                            res = merge_sources(store, [(f"ray chunk of {len(chunk)}", src)])
                    finally:
                        src.close()
                    written += len(chunk)
                    tokens += tables["tokens"].num_rows
                    rows += tables["routes"].num_rows
                    status = res.runs[run_id]["status"]
                    progress.update(task, advance=len(chunk))
        else:
            with target.open() as store:
                status = store.run_info(run_id)["status"]
    except KeyboardInterrupt:
        raise CollectionInterrupted(
            f"interrupted: run {run_id} keeps {len(stored) + written} of {total} sequences in "
            f"{job.db}; re-run the same command to resume"
        ) from None
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            first = str(exc).strip().splitlines()
            raise ScaleOutError(
                f"a Ray worker failed ({type(exc).__name__}: {first[-1] if first else ''}); "
                f"{len(stored) + written} sequences are kept in {job.db}, re-run to resume"
            ) from exc
        raise
    finally:
        target.close()
        if started_ray:
            ray.shutdown()
    return RunResult(
        run_id=run_id,
        db=job.db,
        sequences_total=total,
        sequences_skipped=len(stored),
        sequences_written=written,
        tokens_written=tokens,
        route_rows=rows,
        seconds=time.perf_counter() - start,
        status=status,
    )


__all__ = [
    "MergeResult",
    "ParquetPartsStore",
    "ScaleOutError",
    "Shard",
    "collect_chunk",
    "install_presets",
    "job_presets",
    "merge_sources",
    "merge_stores",
    "run_ray",
    "tables_source",
]
