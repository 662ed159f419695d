"""`routescope import FORMAT PATH…`: a routing trace from another engine becomes a run."""

from __future__ import annotations

from pathlib import Path

import typer

from routescope.cli._app import DEFAULT_DB, app
from routescope.cli.summarize import SUMMARIZE_HELP
from routescope.importers.registry import FORMATS

_FORMATS_HELP = "; ".join(f"{f.name}: {f.description} (files: {f.files})" for f in FORMATS.values())


@app.command(
    "import",
    help=f"Import a routing trace recorded by another engine as a run. Formats: {_FORMATS_HELP}.",
)
def import_cmd(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=f"One of {', '.join(FORMATS)}."),
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Trace files or directories."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to write."),
    name: str = typer.Option(..., "--name", help="Run name (also its id; re-run to resume)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Local model directory: shape and token texts (config only)."
    ),
    label: str | None = typer.Option(None, help="Label for every imported sequence."),
    num_experts: int | None = typer.Option(None, "--num-experts", help="Routed experts E."),
    top_k: int | None = typer.Option(None, "--top-k", help="Experts per token k."),
    seq_len: int | None = typer.Option(
        None, "--seq-len", help="flame: tokens per sequence of the stream (default 2048)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    summarize: bool = typer.Option(True, "--summarize/--no-summarize", help=SUMMARIZE_HELP),
) -> None:
    """Import FORMAT files into a run; a malformed file stops it before anything is written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from routescope.importers import get_format, import_trace

    get_format(fmt)  # an unknown format: one line listing the formats
    bar = Progress(
        TextColumn("[bold]import[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("sequences"),
        disable=quiet,
        transient=True,
    )
    with bar:
        task = bar.add_task(fmt, total=None)
        result = import_trace(
            fmt,
            paths,
            db=db,
            name=name,
            model=model,
            label=label,
            num_experts=num_experts,
            top_k=top_k,
            seq_len=seq_len,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            finishing=lambda: bar.update(
                task, description=f"{fmt}: clustering the run's rows by layer…"
            ),
        )
    weights = "with gate weights" if result.has_weights else "no gate weights"
    tokens = "" if result.has_token_ids else ", no token ids"
    typer.echo(
        f"imported {result.format} trace as run {result.run_id} in {result.db}: "
        f"{result.sequences_written} sequences written ({result.sequences_skipped} already "
        f"stored), {result.tokens_written} tokens, {result.route_rows} route rows; "
        f"{len(result.layers)} MoE layers, top-{result.top_k} of {result.num_experts} "
        f"({weights}{tokens})"
    )
    if summarize:
        from routescope.cli.summarize import summarize_run

        summarize_run(result.db, result.run_id, quiet=quiet, after="import")
