"""CLI command: `routescope demo`, the main job on the embedded default (the shipped demo model)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import typer

from routescope.cli._app import DEFAULT_DB, app

if TYPE_CHECKING:
    from routescope.collect.jobs import JobSpec

DEMO_DOMAIN_RUN = "demo-domains"
DEMO_BEHAVIOUR_RUN = "demo-behaviours"


def demo_jobs(db: str, batch_size: int = 16, split: str | None = None) -> list[JobSpec]:
    """The two demo jobs: the five domains (prefill) and the behaviour pairs (with 8 generated
    tokens each, so decode routing is there too)."""
    from routescope.collect.jobs import JobSpec, PromptSetSpec
    from routescope.core.errors import RoutescopeError
    from routescope.models.demo import DEMO_DOMAINS, DEMO_PROMPTS_DIR

    if not DEMO_PROMPTS_DIR.is_dir():
        raise RoutescopeError(
            f"demo prompt sets not found at {DEMO_PROMPTS_DIR}; install routescope from its "
            "repository with `bash scripts/install.sh` (editable install)"
        )
    domains = tuple(
        PromptSetSpec(path=str(DEMO_PROMPTS_DIR / f"{d}.jsonl"), label=d, split=split)
        for d in DEMO_DOMAINS
    )
    behaviours = tuple(
        PromptSetSpec(path=str(p), split=split)
        for p in sorted(DEMO_PROMPTS_DIR.glob("behaviour_*.jsonl"))
    )
    suffix = f"-{split}" if split else ""
    domain_job = JobSpec(
        prompt_sets=domains,
        name=DEMO_DOMAIN_RUN + suffix,
        model="demo",
        dtype="float32",
        device="cpu",
        batch_size=batch_size,
        max_length=256,
        db=db,
    )
    jobs = [domain_job]
    if behaviours:
        jobs.append(
            replace(
                domain_job,
                prompt_sets=behaviours,
                name=DEMO_BEHAVIOUR_RUN + suffix,
                max_new_tokens=8,
            )
        )
    return jobs


@app.command()
def demo(
    db: str = typer.Option(DEFAULT_DB, "--db", help="DuckDB file to write (created if missing)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Sequences per forward pass."),
    split: str = typer.Option(
        "all", "--split", help="Prompt split to collect: all, train or heldout (quicker)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    summarize: bool = typer.Option(
        False,
        "--summarize/--no-summarize",
        help="Also compute what the dashboard pages show by default into the store "
        "(`routescope summarize`; off to keep the demo quick: the pages compute it on first "
        "view, a few seconds each on the demo's runs).",
    ),
) -> None:
    """Collect the demo model's routing over its prompt sets, then summarise what it shows.

    Resumable: run it again after an interruption and it continues where it stopped.
    """
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from routescope.analysis.specialization import (
        domain_specialization,
        load_summary,
        top_specialized_experts,
    )
    from routescope.collect.runner import run_job
    from routescope.store.store import RoutingStore

    console = Console()
    from routescope.core.errors import InvalidParameterError

    if split not in ("all", "train", "heldout"):
        raise InvalidParameterError(f"--split {split!r}: use all, train or heldout")
    jobs = demo_jobs(db, batch_size, None if split == "all" else split)
    for job in jobs:
        if not quiet:
            console.print(f"[bold]collecting[/bold] {job.name} → {db}")
        run_job(job, quiet=quiet)
        if summarize:
            from routescope.cli.summarize import summarize_run

            summarize_run(db, job.run_id, quiet=quiet, after="collect")

    with RoutingStore(db, read_only=True) as store:
        runs = store.runs()
        domain_run = jobs[0].run_id
        trace = store.load_trace(domain_run)
    from routescope.cli.runs import runs_table

    table = runs_table(runs, f"runs in {db}")
    console.print(table)

    loads = load_summary(trace)
    top = top_specialized_experts(domain_specialization(trace), per_group=1)
    labels = trace.label_set
    spec_table = Table(
        title="most domain-specific expert per layer: expert, then its rate on the domain's "
        "tokens ÷ uniform k/E and ÷ its rate on the other domains"
    )
    spec_table.add_column("layer")
    spec_table.add_column("load entropy")
    for lab in labels:
        spec_table.add_column(lab)
    ent = dict(zip(loads["layer"].to_list(), loads["entropy_norm"].to_list(), strict=True))
    for layer in trace.layers:
        cells = []
        for lab in labels:
            r = top.filter((pl.col("layer") == layer) & (pl.col("label") == lab)).row(0, named=True)
            other = r["ratio_other"]
            other_s = "∞" if other is None or other == float("inf") else f"{other:.0f}"
            cells.append(f"e{r['expert']} {r['ratio_uniform']:.1f}× {other_s}×")
        spec_table.add_row(str(layer), f"{ent.get(layer, float('nan')):.3f}", *cells)
    console.print(spec_table)
    console.print(
        "next: [bold]routescope app --db " + db + "[/bold] (dashboard) · "
        f"routescope analyze consistency {domain_run} --db {db} · "
        f"routescope localize {domain_run} --db {db} --target label:python --control rest"
    )
