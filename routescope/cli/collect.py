"""`routescope collect`: run a collection job from a TOML spec and/or flags, in one process, as a
shard (--shard i/n, into its own DuckDB file or --parts DIR), or on Ray (--ray)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from routescope.cli._app import app
from routescope.cli.summarize import SUMMARIZE_HELP

if TYPE_CHECKING:
    from routescope.collect.jobs import JobSpec
    from routescope.collect.runner import JobSteering, RunResult


@app.command()
def collect(
    job_file: Path | None = typer.Argument(
        None, help="TOML job spec (see collectors/README.md); flags below override its fields."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Hub id or local path (default: the shipped demo model)."
    ),
    prompts: list[Path] | None = typer.Option(
        None, "--prompts", "-p", help="Prompt file (.jsonl/.csv/.parquet/.txt); repeatable."
    ),
    label: str | None = typer.Option(None, help="Label for every prompt (overrides the files')."),
    db: str | None = typer.Option(None, help="DuckDB file to write (default routescope.duckdb)."),
    batch_size: int | None = typer.Option(None, "--batch-size", "-b", help="Sequences per batch."),
    max_length: int | None = typer.Option(None, help="Truncate prompts to this many tokens."),
    max_new_tokens: int | None = typer.Option(
        None, help="Generate and record this many tokens per prompt."
    ),
    save_probs: bool | None = typer.Option(
        None, "--save-probs/--no-save-probs", help="Also store full router distributions."
    ),
    speculative: int | None = typer.Option(
        None,
        "--speculative",
        min=1,
        metavar="D",
        help="Also record speculative-gate rankings for d = 1..D: layer l's router applied to "
        "the router input of layer l - d (for `analyze prefetch`, `simulate offload`).",
    ),
    speculative_width: int | None = typer.Option(
        None,
        "--speculative-width",
        min=1,
        metavar="M",
        help="With --speculative: experts per ranking (default 2k).",
    ),
    name: str | None = typer.Option(None, help="Run name (also its id); resumes when reused."),
    steer: str | None = typer.Option(
        None,
        "--steer",
        help="Steering preset name (in --db) or spec file (.toml/.json) applied while collecting.",
    ),
    dtype: str | None = typer.Option(None, help="float32, bfloat16, float16 or auto."),
    device: str | None = typer.Option(None, help="cpu, cuda, cuda:1, mps, …"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="Collect only shard i/n (seq_id % n == i) into its own store; join with "
        "`routescope merge`.",
    ),
    parts: Path | None = typer.Option(
        None, "--parts", help="With --shard: write Parquet parts to this directory."
    ),
    use_ray: bool = typer.Option(False, "--ray", help="Run the job on a Ray cluster."),
    address: str | None = typer.Option(
        None, "--address", help="With --ray: the cluster address (default: start a local one)."
    ),
    workers: int = typer.Option(2, "--workers", help="With --ray: number of model workers."),
    summarize: bool = typer.Option(
        True,
        "--summarize/--no-summarize",
        help=SUMMARIZE_HELP + " Not for --shard or --parts (summarize the merged store).",
    ),
) -> None:
    """Record a model's routing over prompt sets into the DuckDB store (resumable: re-run the same
    command after an interruption to continue)."""
    from rich.console import Console

    from routescope.collect.jobs import JobSpecError, job_from_options, load_job
    from routescope.collect.runner import CollectionInterrupted, run_job

    options = {
        "model": model,
        "db": db,
        "batch_size": batch_size,
        "max_length": max_length,
        "max_new_tokens": max_new_tokens,
        "save_probs": save_probs,
        "speculative": speculative,
        "speculative_width": speculative_width,
        "name": name,
        "dtype": dtype,
        "device": device,
        "steering": steer,
    }
    if job_file is not None:
        job = load_job(job_file)
        if prompts:
            from routescope.collect.jobs import PromptSetSpec

            sets = tuple(PromptSetSpec(path=str(p), label=label) for p in prompts)
            job = job.with_overrides(prompt_sets=sets)
        elif label is not None:
            from dataclasses import replace

            sets = tuple(replace(ps, label=label) for ps in job.prompt_sets)
            job = job.with_overrides(prompt_sets=sets)
        job = job.with_overrides(**options)
    elif prompts:
        job = job_from_options([str(p) for p in prompts], label=label, **options)
    else:
        raise JobSpecError(
            "nothing to collect: give a job file (e.g. `routescope collect collectors/demo.toml`) "
            "or --prompts FILE"
        )
    from routescope.steering.presets import job_steering

    err = Console(stderr=True)
    steering = job_steering(job)  # a preset or spec file, resolved above the collection layer
    try:
        if use_ray or shard is not None or parts is not None or address is not None:
            result = run_scaled(job, steering, quiet, shard, parts, use_ray, address, workers)
        else:
            result = run_job(job, quiet=quiet, steering=steering)
    except CollectionInterrupted as exc:
        err.print(f"[yellow]{exc}[/]", highlight=False, soft_wrap=True)
        raise SystemExit(130) from None  # (typer.Exit's code is lost under standalone_mode=False)
    if not quiet:
        if result.sequences_written == 0:
            msg = f"run {result.run_id} was already complete ({result.sequences_total} sequences)"
        else:
            msg = (
                f"run {result.run_id}: {result.sequences_written} sequences, "
                f"{result.tokens_written} tokens ({result.tokens_per_second:,.0f} tok/s)"
            )
            if result.sequences_skipped:
                msg += f"; {result.sequences_skipped} already stored were skipped"
        err.print(f"{msg} → {result.db}", highlight=False, soft_wrap=True)
    if summarize and result.status == "complete" and shard is None and parts is None:
        from routescope.cli.summarize import summarize_run

        summarize_run(result.db, result.run_id, quiet=quiet, after="collect")


def run_scaled(
    job: JobSpec,
    steering: JobSteering | None,
    quiet: bool,
    shard: str | None,
    parts: Path | None,
    use_ray: bool,
    address: str | None,
    workers: int,
) -> RunResult:
    """Run a job as one shard (own DuckDB file or Parquet parts) or on Ray; returns its RunResult."""
    from routescope.collect.runner import run_job
    from routescope.collect.scaleout import ScaleOutError, Shard, run_ray
    from routescope.store.parts import ParquetPartsStore
    from routescope.store.writer import IntermittentStore

    if use_ray:
        if shard is not None or parts is not None:
            raise ScaleOutError("--ray splits the job itself; leave out --shard and --parts")
        return run_ray(job, steering=steering, address=address, workers=workers, quiet=quiet)
    if address is not None:
        raise ScaleOutError("--address is for --ray; add --ray or leave it out")
    if shard is None:
        raise ScaleOutError("--parts needs --shard i/n (the shard whose parts to write)")
    sh = Shard.parse(shard)
    # the shard's own output stands in for the job's db (in messages and results too)
    if parts is not None:
        with ParquetPartsStore(parts) as store:
            return run_job(
                job.with_overrides(db=str(parts)),
                quiet=quiet,
                select=sh,
                store=store,
                steering=steering,
            )
    shard_job = job.with_overrides(db=sh.default_db(job.db))
    with IntermittentStore(shard_job.db) as writer:
        if job.steering is not None:  # the run names its preset: the shard holds it too
            from routescope.steering.presets import copy_preset

            with writer.open() as st:
                copy_preset(job.steering, job.db, st.con)
        return run_job(shard_job, quiet=quiet, select=sh, store=writer, steering=steering)
