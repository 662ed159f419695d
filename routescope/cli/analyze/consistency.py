"""`routescope analyze consistency`: repetition, SRP and SCH of a run (DESIGN §4.1).

The run is read chunk by chunk from the store (`RoutingStore.source`), in one process or as Ray
tasks (`--ray [--address ADDR]`), and each result is kept in the store's memo of analysis results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from routescope.cli._analysis import ADDRESS_HELP, RAY_HELP, analysis_session, echo_json
from routescope.cli._app import DEFAULT_DB, analyze_app
from routescope.cli._format import check_choice, fmt, json_rows, parse_int_list


@analyze_app.command("consistency")
def consistency_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file (or Parquet export) to read."),
    segments: str = typer.Option("4,16,64,256", help="Segment lengths L, e.g. 4,16,64,256 or 1-8."),
    phase: str = typer.Option("all", help="all, prefill or decode."),
    label: list[str] = typer.Option(None, "--label", help="Only sequences with this label."),
    seed: int = typer.Option(0, help="Seed of the shuffled-order baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path | None = typer.Option(None, help="Write a plotly figure (.html, or .png)."),
    use_ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status messages."),
) -> None:
    """Local routing consistency: repetition rates (Mixtral's Table 5), SRP with its floor and
    shuffled-order baseline, and the segment-oracle SCH (Liang et al. 2025)."""
    from routescope.analysis import consistency as cons

    segs = cons.check_segment_lengths(parse_int_list(segments, "segment lengths"))
    check_choice(phase, cons.CONSISTENCY_PHASES, "phase")
    labels = sorted(label) if label else None
    sel: dict[str, Any] = {"read": phase, "phase": phase, "labels": labels}
    quiet = quiet or as_json
    with analysis_session(db, run, use_ray=use_ray, address=address, quiet=quiet) as s:
        rep = s.memo(cons.repetition_rates, "repetition", **sel)
        srp = s.memo(cons.srp, "SRP", segment_lengths=segs, shuffled_seed=seed, **sel)
        sch = s.memo(cons.sch, "SCH", segment_lengths=segs, **sel)
    if plot is not None:
        from routescope.analysis.figures_locality import srp_figure

        s.plot(lambda: srp_figure(srp, title=f"SRP — run {s.run_id}"), plot)
    if as_json:
        echo_json(
            {
                "run_id": s.run_id,
                "phase": phase,
                "labels": labels,
                "repetition": json_rows(rep),
                "srp": json_rows(srp),
                "sch_segment_oracle": json_rows(sch),
            }
        )
        return
    _print_consistency(s.run_id, rep, srp, sch)


def _print_consistency(run_id: str, rep: Any, srp: Any, sch: Any) -> None:
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    con = Console()
    pooled = rep.filter(pl.col("layer").is_null()).to_dicts()[0]
    t = Table(title=f"Repetition between consecutive tokens — run {run_id} (all layers)")
    for c in ("measure", "rate", "chance"):
        t.add_column(c, justify="right" if c != "measure" else "left")
    t.add_row("top-1 expert repeats", fmt(pooled["top1_repeat"]), fmt(pooled["top1_chance"]))
    t.add_row("top-2 sets share one", fmt(pooled["top2_share"]), fmt(pooled["top2_chance"]))
    t.add_row("top-k overlap share", fmt(pooled["topk_overlap"]), fmt(pooled["topk_chance"]))
    con.print(t)

    k_rows = sch.filter(pl.col("rho") == 1.0)
    t = Table(title="SRP, pooled over MoE layers (floor = 2r/(1+r); gap = SRP − shuffled)")
    for c in ("L", "windows", "SRP", "c*", "ĝ", "floor", "shuffled", "gap", "SCH ρ=1"):
        t.add_column(c, justify="right")
    for r in srp.filter(pl.col("layer").is_null()).sort("segment_length").to_dicts():
        sch_k = k_rows.filter(
            pl.col("layer").is_null() & (pl.col("segment_length") == r["segment_length"])
        )["hit_rate"]
        t.add_row(
            str(r["segment_length"]),
            str(r["windows"]),
            fmt(r["srp"]),
            fmt(r["c_star"]),
            fmt(r["g_hat"], 2),
            fmt(r["floor"]),
            fmt(r.get("srp_shuffled")),
            fmt(r.get("locality_gap")),
            fmt(sch_k[0] if len(sch_k) else None),
        )
    con.print(t)

    per = srp.filter(pl.col("layer").is_not_null())
    seg_list = sorted(per["segment_length"].unique().to_list())
    t = Table(title="SRP per layer")
    t.add_column("layer", justify="right")
    t.add_column("top-1 repeat", justify="right")
    for s in seg_list:
        t.add_column(f"L={s}", justify="right")
    rep_by_layer = {r["layer"]: r["top1_repeat"] for r in rep.to_dicts()}
    for layer in sorted(per["layer"].unique().to_list()):
        vals = per.filter(pl.col("layer") == layer)
        cells = [
            fmt(vals.filter(pl.col("segment_length") == s)["srp"].to_list()[0]) for s in seg_list
        ]
        t.add_row(str(layer), fmt(rep_by_layer.get(layer)), *cells)
    con.print(t)
