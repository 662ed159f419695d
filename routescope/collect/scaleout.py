"""Collection that scales out: shards of a job and a Ray driver.

A job's sequence ids are the global prompt-order index, so any split of the ids can be collected
anywhere and merged without remapping:
- `--shard i/n` collects the ids with seq_id % n == i into its own DuckDB file or Parquet parts dir
  (`routescope.store.parts`); `routescope merge` brings shards together (`routescope.store.merge`);
- `run_ray(job)` splits the job into chunks over Ray actors (each loads the model once); each chunk
  comes back as Arrow tables and is merged into the job's store with the same merge code.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from routescope.collect.jobs import JobSpec
from routescope.collect.runner import JobSteering
from routescope.core.errors import RoutescopeError

if TYPE_CHECKING:
    from routescope.collect.prompts import Prompt
    from routescope.models.loading import LoadedModel


class ScaleOutError(RoutescopeError):
    """A shard option, a merge or a Ray collection cannot proceed as asked."""


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
    job: JobSpec,
    lm: LoadedModel,
    prompts: list[Prompt],
    seq_ids: Sequence[int],
    steering: JobSteering | None = None,
) -> dict[str, pa.Table]:
    """Collect some of a job's sequences into memory; returns the store's tables as Arrow."""
    from routescope.collect.runner import run_job
    from routescope.store.store import RoutingStore
    from routescope.store.writer import RUN_TABLES

    keep = set(seq_ids)
    with RoutingStore(":memory:") as mem:
        run_job(
            job,
            quiet=True,
            lm=lm,
            store=mem,
            steering=steering,
            select=keep.__contains__,
            prompts=prompts,
            flush_rows=1 << 62,
            flush_seconds=math.inf,
        )
        return {
            t: mem.con.sql(f"SELECT * FROM {t}").to_arrow_table()
            for t in ("runs", "meta", *RUN_TABLES)
        }


class _Worker:
    """A Ray actor body: loads the job's model once, then collects chunks of sequence ids."""

    def __init__(
        self, job: JobSpec, prompts: list[Any], steering: JobSteering | None, threads: int
    ) -> None:
        import torch

        from routescope.collect.runner import load_job_model

        torch.set_num_threads(max(1, threads))
        self.job, self.prompts, self.steering = job, prompts, steering
        self.lm = load_job_model(job, quiet=True)

    def collect(self, seq_ids: list[int]) -> dict[str, pa.Table]:
        return collect_chunk(self.job, self.lm, self.prompts, seq_ids, self.steering)


def run_ray(
    job: JobSpec,
    *,
    steering: JobSteering | None = None,
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
    from routescope.store.merge import merge_sources, tables_source
    from routescope.store.store import RoutingStore
    from routescope.store.writer import IntermittentStore

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
                if st.con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
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
            actors = [
                actor_cls.remote(job, prompts, steering, threads)
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
                            res = merge_sources(
                                store, [(f"ray chunk of {len(chunk)}", src)], cluster=False
                            )
                    finally:
                        src.close()
                    written += len(chunk)
                    tokens += tables["tokens"].num_rows
                    rows += tables["routes"].num_rows
                    status = res.runs[run_id]["status"]
                    progress.update(task, advance=len(chunk))
            target.finish_run(run_id)  # cluster the run's rows once, at the end
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


__all__ = ["ScaleOutError", "Shard", "collect_chunk", "run_ray"]
