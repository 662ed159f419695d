"""Run a collection job: prompts → tokenize → batches through the engine → the routing store.

Resumable: the run id is deterministic from the job, each batch of whole sequences is one store
transaction, and sequences already stored are skipped, so re-running an interrupted command
continues where it stopped. seq_id is a prompt's index in the job's prompt order (stable).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from routescope.collect.jobs import DEMO_MODEL, JobSpec, JobSpecError
from routescope.collect.prompts import Prompt, TokenizedPrompt, read_prompt_set, tokenize_prompts
from routescope.core.errors import RoutescopeError
from routescope.core.protocols import RunWriter
from routescope.core.records import BatchRouting
from routescope.store.schema import job_size_key

if TYPE_CHECKING:
    from routescope.collect.engine import RouterEdit
    from routescope.models.loading import LoadedModel

CollectFn = Callable[..., BatchRouting]


@dataclass(frozen=True)
class JobSteering:
    """A job's steering, resolved above the collection layer (`routescope.steering.job_steering`).

    steering_id: what the run records (the preset id, or the spec file's path); spec: the spec as
    a dict (recorded in the run's config, so an edited preset makes another run); make_edit(lm):
    the engine's `RouterEdit` for a loaded model (it validates layers and experts against it).
    Picklable, so shards and Ray workers build the same edit for their own copy of the model.
    """

    steering_id: str
    spec: dict[str, Any]
    make_edit: Callable[[LoadedModel], RouterEdit | None]


class CollectionInterrupted(RoutescopeError):
    """Ctrl-C or out of memory during a collection; the run is kept and can be resumed."""


@dataclass
class RunResult:
    """What a job did: counts of this invocation and the run's final status."""

    run_id: str
    db: str
    sequences_total: int
    sequences_skipped: int
    sequences_written: int
    tokens_written: int
    route_rows: int
    seconds: float
    status: str

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_written / self.seconds if self.seconds > 0 else 0.0


def read_job_prompts(job: JobSpec) -> list[Prompt]:
    """All prompts of the job in job order (prompt sets in order, rows in file order)."""
    prompts: list[Prompt] = []
    for ps in job.prompt_sets:
        prompts.extend(read_prompt_set(ps.path, label=ps.label, split=ps.split, name=ps.name))
    return prompts


def resolve_model_path(model: str) -> str:
    """'demo' → the shipped demo model's directory (clear error if it is not there)."""
    from routescope.models.loading import DEMO_MODEL_ID

    if model not in (DEMO_MODEL, DEMO_MODEL_ID):
        return model
    try:
        from routescope.models.demo import DEMO_MODEL_PATH
    except ImportError:
        raise JobSpecError(
            "the demo model is not installed in this checkout (routescope/models/demo); "
            "pass --model PATH_OR_HUB_ID"
        ) from None
    path = Path(DEMO_MODEL_PATH)
    if not (path / "config.json").is_file():
        raise JobSpecError(
            f"the demo model's files are missing from {path}; build it with "
            "`python -m routescope.models.demo.train` or pass --model PATH_OR_HUB_ID"
        )
    return str(path)


def load_job_model(job: JobSpec, quiet: bool = False) -> Any:
    """Load the job's model as a `routescope.models.LoadedModel` (torch imported only here)."""
    from routescope.models import load_model

    lm = load_model(
        resolve_model_path(job.model),
        dtype=job.dtype,
        device=job.device,
        trust_remote_code=job.trust_remote_code,
        revision=job.revision,
        quiet=quiet,
    )
    return lm


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("routescope", "torch", "transformers", "nnsight", "duckdb"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    text = str(exc).lower()
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError)
        and ("out of memory" in text or "can't allocate memory" in text)
    )


def plan_batches(
    tokenized: Sequence[TokenizedPrompt], todo: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Batches of seq ids, longest first (fewer pads per batch, and memory trouble shows early)."""
    order = sorted(todo, key=lambda i: (-len(tokenized[i].input_ids), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _TokenTexts:
    """Token id → text, decoded once per id with the tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}

    def update(self, token_ids: np.ndarray) -> dict[int, str]:
        new = [int(i) for i in np.unique(token_ids) if int(i) not in self.texts]
        if new:
            decoded = self.tokenizer.batch_decode([[i] for i in new])
            self.texts.update(zip(new, decoded, strict=True))
        return self.texts


def run_job(
    job: JobSpec,
    *,
    quiet: bool = False,
    lm: LoadedModel | None = None,
    collect_fn: CollectFn | None = None,
    store: RunWriter | None = None,
    steering: JobSteering | None = None,
    after_batch: Callable[[int], None] | None = None,
    flush_rows: int = 262_144,
    flush_seconds: float = 20.0,
    select: Callable[[int], bool] | None = None,
    prompts: list[Prompt] | None = None,
) -> RunResult:
    """Collect the job's routing into its database, resuming a previous partial run.

    lm: an already-loaded `LoadedModel` (else the job's model is loaded); collect_fn: the engine
    (default `routescope.collect.engine.collect_batch`); store: an open writable `RoutingStore`
    (else job.db is written through an `IntermittentStore`, which holds the file's lock only
    while committing, so other processes can read the store during the job); after_batch(i) is
    called after engine batch i is computed and handed to the writer. steering: the job's
    steering resolved above this layer (required when the job names one; see
    `routescope.steering.job_steering`). select(seq_id) → keep: collect only those sequences
    (a shard; its run ends 'partial' unless it covers the job); prompts: the job's prompts if
    already read (else read from its files).
    Engine batches are written together once they reach flush_rows route rows or flush_seconds
    (and on Ctrl-C or out-of-memory, so every computed sequence is kept).
    Raises `CollectionInterrupted` on Ctrl-C or out-of-memory, with the run marked 'interrupted'.
    """
    from routescope.store.writer import IntermittentStore

    if job.steering is not None and steering is None:
        raise JobSpecError(
            f"job {job.name or job.run_id} names steering {job.steering!r}: pass "
            "steering=routescope.steering.job_steering(job) to run_job (the CLI does this)"
        )
    if prompts is None:
        prompts = read_job_prompts(job)
    writer: RunWriter = IntermittentStore(job.db) if store is None else store
    run_id = job.run_id
    try:
        if lm is None:
            lm = load_job_model(job, quiet=quiet)
        if collect_fn is None:
            from routescope.collect.engine import collect_batch

            collect_fn = collect_batch
        if lm.tokenizer is None:
            raise JobSpecError(f"model {job.model} has no tokenizer; it is needed to tokenize")
        tokenized = tokenize_prompts(prompts, lm.tokenizer, job.max_length)
        spec_width = _speculative_width(job, lm)  # a bad D or m fails before the run exists
        edit, stored = _setup_run(job, lm, writer, run_id, steering, spec_width)
        writer.set_meta(job_size_key(run_id), {"sequences": len(tokenized)})
        selected = [i for i in range(len(tokenized)) if select is None or select(i)]
        todo = [i for i in selected if i not in stored]
        plan = _CollectPlan(
            job=job,
            run_id=run_id,
            tokenized=tokenized,
            batches=plan_batches(tokenized, todo, job.batch_size),
            total=len(selected),
            final_status="complete" if len(selected) == len(tokenized) else "partial",
            edit=edit,
        )
        result = _collect(
            plan,
            writer,
            lm,
            collect_fn,
            quiet=quiet,
            after_batch=after_batch,
            flush_rows=flush_rows,
            flush_seconds=flush_seconds,
        )
        result.sequences_skipped = len(selected) - len(todo)
        return result
    finally:
        if store is None:
            writer.close()


def _speculative_width(job: JobSpec, lm: LoadedModel) -> int | None:
    """The job's speculative ranking width m checked against the model (None: not recording)."""
    if not job.speculative:
        return None
    from routescope.collect.engine import check_speculative

    return check_speculative(lm, job.speculative, job.speculative_width)


def _setup_run(
    job: JobSpec,
    lm: LoadedModel,
    store: RunWriter,
    run_id: str,
    steering: JobSteering | None,
    spec_width: int | None = None,
) -> tuple[RouterEdit | None, set[int]]:
    """Create or resume the run; returns (the engine's steering edit or None, stored seq ids).
    ``spec_width``: the resolved speculative width m, recorded in the run's config."""
    config = job.identity()
    if spec_width is not None:
        config["speculative_width"] = spec_width  # the default 2k, resolved for this model
    edit, steering_id = None, None
    if steering is not None:
        edit, steering_id = steering.make_edit(lm), steering.steering_id
        config["steering_spec"] = steering.spec  # an edited preset is a different run
    store.create_or_resume_run(
        run_id,
        name=job.name or run_id,
        model_id=lm.model_id,
        family=lm.family,
        num_layers=lm.num_layers,
        moe_layers=list(lm.moe_layers),
        num_experts=lm.num_experts,
        top_k=lm.top_k,
        num_shared_experts=lm.num_shared_experts,
        norm_topk_prob=lm.norm_topk_prob,
        model_revision=getattr(lm, "revision", None),
        dtype=str(getattr(lm, "dtype", job.dtype)).removeprefix("torch."),
        device=str(getattr(lm, "device", job.device)),
        steering_id=steering_id,
        config=config,
        versions=_versions(),
    )
    return edit, store.stored_seq_ids(run_id)


class _BufferedWriter:
    """Groups engine batches into larger store transactions (whole sequences only).

    DuckDB ingests large transactions much faster (big inserts go straight to the file instead of
    through the write-ahead log), so small engine batches are written together once they reach
    `flush_rows` route rows or `flush_seconds` have passed since the last write.
    """

    def __init__(
        self,
        store: RunWriter,
        run_id: str,
        texts: _TokenTexts,
        flush_rows: int,
        flush_seconds: float,
    ) -> None:
        self.store, self.run_id, self.texts = store, run_id, texts
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.pending: list[tuple[list[dict], BatchRouting, np.ndarray]] = []
        self.pending_rows = 0
        self.last_flush = time.perf_counter()
        self.sequences = self.tokens = self.rows = 0

    def add(self, meta: list[dict], batch: BatchRouting, in_target: np.ndarray) -> None:
        self.pending.append((meta, batch, in_target))
        self.pending_rows += batch.num_tokens * batch.experts.shape[1]
        due = time.perf_counter() - self.last_flush >= self.flush_seconds
        if self.pending_rows >= self.flush_rows or due:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        meta = [m for part in self.pending for m in part[0]]
        batch = concat_batches([part[1] for part in self.pending])
        in_target = np.concatenate([part[2] for part in self.pending])
        self.rows += self.store.write_batch(
            self.run_id, meta, batch, self.texts.update(batch.token_ids), in_target
        )
        self.sequences += len(meta)
        self.tokens += batch.num_tokens
        self.pending, self.pending_rows = [], 0
        self.last_flush = time.perf_counter()


def concat_batches(batches: Sequence[BatchRouting]) -> BatchRouting:
    """One BatchRouting holding the sequences of several, in order."""
    if len(batches) == 1:
        return batches[0]
    offsets = [np.asarray(batches[0].seq_offsets, dtype=np.int64)]
    for b in batches[1:]:
        offsets.append(np.asarray(b.seq_offsets[1:], dtype=np.int64) + offsets[-1][-1])
    probs = [b.probs for b in batches if b.probs is not None]
    spec = [b.speculative for b in batches if b.speculative is not None]
    return BatchRouting(
        seq_offsets=np.concatenate(offsets),
        token_ids=np.concatenate([b.token_ids for b in batches]),
        positions=np.concatenate([b.positions for b in batches]),
        phase=np.concatenate([b.phase for b in batches]),
        experts=np.concatenate([b.experts for b in batches]),
        weights=np.concatenate([b.weights for b in batches]),
        probs=np.concatenate(probs) if len(probs) == len(batches) else None,
        speculative=np.concatenate(spec) if len(spec) == len(batches) else None,
    )


@dataclass
class _CollectPlan:
    """What one invocation collects: the job's sequences still to do, batched."""

    job: JobSpec
    run_id: str
    tokenized: list[TokenizedPrompt]
    batches: list[list[int]]
    total: int
    final_status: str
    edit: RouterEdit | None = None


def _collect(
    plan: _CollectPlan,
    store: RunWriter,
    lm: LoadedModel,
    collect_fn: CollectFn,
    *,
    quiet: bool,
    after_batch: Callable[[int], None] | None,
    flush_rows: int,
    flush_seconds: float,
) -> RunResult:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    job, run_id, tokenized, batches = plan.job, plan.run_id, plan.tokenized, plan.batches
    total = plan.total
    done_before = total - sum(len(b) for b in batches)
    writer = _BufferedWriter(store, run_id, _TokenTexts(lm.tokenizer), flush_rows, flush_seconds)
    computed_tokens = 0
    start = time.perf_counter()
    progress = Progress(
        TextColumn("[bold]collect[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tps]:>8.0f} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet or not batches,
        transient=False,
    )
    batch_size = job.batch_size
    # speculative recording is passed only when on, so any collect_fn without it still serves
    spec_opts: dict[str, Any] = {}
    if job.speculative:
        spec_opts = {"speculative": job.speculative, "speculative_width": job.speculative_width}

    def save_pending() -> None:
        """On an interruption, keep the whole sequences already computed."""
        with contextlib.suppress(Exception):
            writer.flush()

    try:
        with progress:
            task = progress.add_task(run_id, total=total, completed=done_before, tps=0.0)
            for bi, seq_ids in enumerate(batches):
                batch = collect_fn(
                    lm,
                    [tokenized[i].input_ids for i in seq_ids],
                    max_new_tokens=job.max_new_tokens,
                    save_probs=job.save_probs,
                    steering=plan.edit,
                    **spec_opts,
                )
                if batch.num_sequences != len(seq_ids):
                    raise RuntimeError(
                        f"engine returned {batch.num_sequences} sequences for {len(seq_ids)}"
                    )
                meta = [
                    {
                        "seq_id": i,
                        "prompt_set": tokenized[i].prompt.prompt_set,
                        "prompt_id": tokenized[i].prompt.id,
                        "label": tokenized[i].prompt.label,
                        "text": tokenized[i].text,
                    }
                    for i in seq_ids
                ]
                writer.add(meta, batch, _in_target_rows(batch, [tokenized[i] for i in seq_ids]))
                computed_tokens += batch.num_tokens
                elapsed = time.perf_counter() - start
                progress.update(
                    task, advance=len(seq_ids), tps=computed_tokens / max(elapsed, 1e-9)
                )
                if after_batch is not None:
                    after_batch(bi)
            writer.flush()
    except KeyboardInterrupt:
        save_pending()
        store.set_status(run_id, "interrupted")
        raise CollectionInterrupted(
            f"interrupted: run {run_id} keeps {done_before + writer.sequences} of {total} "
            f"sequences in {job.db}; re-run the same command to resume"
        ) from None
    except Exception as exc:
        if _is_oom(exc):
            save_pending()
            store.set_status(run_id, "interrupted")
            smaller = max(1, batch_size // 2)
            raise CollectionInterrupted(
                f"out of memory at batch size {batch_size}: run {run_id} keeps "
                f"{done_before + writer.sequences} of {total} sequences; re-run the same command "
                f"with --batch-size {smaller} to resume"
            ) from None
        store.set_status(run_id, "failed")
        raise
    store.set_status(run_id, plan.final_status)
    with _finishing(run_id, quiet=quiet or not batches):
        store.finish_run(run_id)  # e.g. cluster the run's rows by layer for reading
    return RunResult(
        run_id=run_id,
        db=job.db,
        sequences_total=total,
        sequences_skipped=done_before,
        sequences_written=writer.sequences,
        tokens_written=writer.tokens,
        route_rows=writer.rows,
        seconds=time.perf_counter() - start,
        status=plan.final_status,
    )


def _in_target_rows(batch: BatchRouting, prompts: Sequence[TokenizedPrompt]) -> np.ndarray:
    """bool per token row: a prefill token whose prompt position lies in the prompt's target."""
    out = np.zeros(batch.num_tokens, dtype=bool)
    for b, tp in enumerate(prompts):
        sl = batch.sequence(b)
        if not tp.in_target.any():
            continue
        pos = np.asarray(batch.positions[sl], dtype=np.int64)
        prefill = (np.asarray(batch.phase[sl]) == 0) & (pos < len(tp.in_target))
        vals = np.zeros(len(pos), dtype=bool)
        vals[prefill] = tp.in_target[pos[prefill]]
        out[sl] = vals
    return out


@contextlib.contextmanager
def _finishing(run_id: str, quiet: bool) -> Iterator[None]:
    """A spinner on stderr while the store finishes the run (clustering its rows by layer, and
    compacting the file: about a minute and a half per 60M route rows)."""
    if quiet:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(f"finishing run {run_id}: clustering its rows by layer…"):
        yield
