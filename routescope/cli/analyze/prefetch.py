"""`routescope analyze prefetch`: how predictable a run's routing is ahead of time (DESIGN §9).

Predictors, their defaults and help come from the predictor table
(`routescope.analysis.prefetch.registered`). The run is read chunk by chunk from the store; the
result is kept in the store's memo of analysis results (shared with the dashboard's Prefetch page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from routescope.analysis import prefetch as pf
from routescope.cli._analysis import ADDRESS_HELP, RAY_HELP, analysis_session
from routescope.cli._app import DEFAULT_DB, analyze_app
from routescope.cli._format import check_choice, fmt, parse_int_list, parse_names


@analyze_app.command("prefetch")
def prefetch_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file (or Parquet export) to read."),
    predictors: str | None = typer.Option(
        None,
        help=f"Comma list of {pf.valid_names()}; bare speculative/transition run at every "
        "--distances. Default: every registered predictor (speculative when recorded).",
    ),
    distances: str | None = typer.Option(
        None,
        help="Distances d for bare speculative/transition: 1,2 or 1-3 (default 1..D recorded).",
    ),
    widths: str | None = typer.Option(None, help="Widths m, e.g. 8,16 (default k and 2k)."),
    train_split: float = typer.Option(
        pf.DEFAULT_TRAIN_SPLIT,
        "--train-split",
        help="Fraction of sequences (by id hash) the transition counts are fitted on.",
    ),
    evaluate: str = typer.Option(
        "auto",
        help="auto (held-out sequences for every predictor when one is fitted), heldout or all.",
    ),
    phase: str = typer.Option(
        "split", help="split (prefill and decode apart), all, prefill, decode."
    ),
    label: list[str] = typer.Option(None, "--label", help="Only sequences with this label."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path | None = typer.Option(None, help="Write a plotly figure (.html, or .png)."),
    use_ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status messages."),
) -> None:
    """recall@m and precision@m of prefetch predictors (speculative-d, previous-token, window-W,
    transition-d, oracle), per layer, distance and width, prefill and decode apart."""
    names = parse_names(predictors, "predictors", "previous-token,oracle")
    for n in names or ():
        pf.get_predictor(n)
    check_choice(phase, pf.PHASE_CHOICES, "phase")
    check_choice(evaluate, pf.EVALUATE, "evaluate")
    pf.check_train_split(train_split)
    ds = parse_int_list(distances, "distances") if distances else None
    ws = parse_int_list(widths, "widths") if widths else None
    labels = sorted(label) if label else None
    params: dict[str, Any] = {
        "predictors": names,
        "distances": ds,
        "widths": ws,
        "train_split": train_split,
        "evaluate": evaluate,
        "phase": phase,
        "labels": labels,
    }
    # all phases are read: previous-token and window predictors of decode tokens look at prefill
    quiet = quiet or as_json
    with analysis_session(db, run, use_ray=use_ray, address=address, quiet=quiet) as s:
        df = s.memo(pf.prefetch_recall, "prefetch predictors", **params)
    s.output(
        df,
        params,
        as_json=as_json,
        plot=plot,
        figure="figures_prefetch:recall_figure",
        title=f"Prefetch recall@{int(df['width'].min())} by layer — run {s.run_id}",
        table=lambda: print_recall(s.run_id, df),
    )


def print_recall(run_id: str, df: Any) -> None:
    """Pooled recall/precision per predictor and width; recall@m per layer at the smallest m."""
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if df.height == 0:
        con.print(f"run {run_id}: nothing to evaluate")
        return
    widths = sorted(df["width"].unique().to_list())
    pooled = df.filter(pl.col("layer").is_null())
    for (phase,), grp in pooled.group_by(["phase"], maintain_order=True):
        where = grp["evaluated_on"].unique().to_list()
        t = Table(
            title=f"Prefetch — run {run_id}, {phase}, all layers pooled "
            f"(evaluated on {' / '.join(where)} sequences)"
        )
        t.add_column("predictor")
        t.add_column("coverage", justify="right")
        for m in widths:
            t.add_column(f"recall@{m}", justify="right")
            t.add_column(f"prec@{m}", justify="right")
        for (name,), row in grp.group_by(["predictor"], maintain_order=True):
            by_m = {r["width"]: r for r in row.to_dicts()}
            cells = []
            for m in widths:
                r = by_m.get(m, {})
                cells += [fmt(r.get("recall")), fmt(r.get("precision"))]
            t.add_row(str(name), fmt(row["coverage"][0]), *cells)
        chance = ", ".join(
            f"@{m}: {fmt(grp.filter(pl.col('width') == m)['chance'][0])}" for m in widths
        )
        t.caption = f"chance recall (m/E) {chance}; coverage = tokens with a prediction"
        con.print(t)
    per = df.filter(pl.col("layer").is_not_null() & (pl.col("width") == widths[0]))
    layers = sorted(per["layer"].unique().to_list())
    for (phase,), grp in per.group_by(["phase"], maintain_order=True):
        t = Table(title=f"recall@{widths[0]} per layer, {phase}")
        t.add_column("predictor")
        for lay in layers:
            t.add_column(f"L{lay}", justify="right")
        for (name,), row in grp.group_by(["predictor"], maintain_order=True):
            by_l = dict(zip(row["layer"].to_list(), row["recall"].to_list(), strict=True))
            t.add_row(str(name), *[fmt(by_l.get(lay), 2) for lay in layers])
        con.print(t)
