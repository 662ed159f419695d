"""`routescope simulate …`: what-if simulations over a collected run.

`simulate offload`: tokens/s against GPU memory when experts are offloaded to host memory, cached
per layer and prefetched by a predictor (DESIGN §9, `routescope.analysis.offload`). Expert size
and compute come from the run's model config (found locally: the demo model, a model directory,
or the Hugging Face cache; never downloaded) unless given.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from routescope.analysis import offload as ol
from routescope.analysis import prefetch as pf
from routescope.cli._analysis import ADDRESS_HELP, RAY_HELP, analysis_session
from routescope.cli._app import DEFAULT_DB, app
from routescope.cli._format import check_choice, parse_int_list, parse_names
from routescope.models.costs import run_cost

simulate_app = typer.Typer(help="What-if simulations over a collected run.", no_args_is_help=True)
app.add_typer(simulate_app, name="simulate")


@simulate_app.command("offload")
def offload_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file (or Parquet export) to read."),
    policies: str = typer.Option(
        ",".join(ol.DEFAULT_POLICIES), help="Comma list of lru, lfu, fifo, lookahead-<L>, belady."
    ),
    predictors: str | None = typer.Option(
        None,
        help=f"Comma list of {pf.valid_names()} (or none). Default: previous-token, "
        "speculative-<lead> when recorded, oracle.",
    ),
    widths: str | None = typer.Option(None, help="Prefetch widths m, e.g. 8,16 (default k)."),
    lead: int = typer.Option(
        1, help="Layers ahead a prefetch is issued (speculative-d / transition-d use their d)."
    ),
    capacities: str | None = typer.Option(
        None, help="Experts cached per layer: 4,8,16 or 1-64 (default ~9 sizes from k/2 to E)."
    ),
    expert_mb: float | None = typer.Option(
        None, "--expert-mb", help="Bytes of one expert, in MB (default from the model config)."
    ),
    nonexpert_gb: float | None = typer.Option(
        None, "--nonexpert-gb", help="Non-expert weights on the GPU, GB (default from the config)."
    ),
    bandwidth_gbps: float = typer.Option(
        ol.DEFAULT_BANDWIDTH_GBPS, "--bandwidth-gbps", help="Host-to-device GB/s (PCIe 4.0 x16)."
    ),
    tflops: float | None = typer.Option(
        None,
        "--tflops",
        help=f"Effective compute rate for the FLOP count (default {ol.DEFAULT_TFLOPS:g}, a "
        "batch-1 decode step bound by ~1 TB/s of GPU memory).",
    ),
    layer_ms: float | None = typer.Option(
        None, "--layer-ms", help="Compute per MoE layer per token, ms (instead of FLOPs/--tflops)."
    ),
    bytes_per_param: int | None = typer.Option(
        None, "--bytes-per-param", help="2 for bf16/fp16, 1 for 8-bit (default from the config)."
    ),
    phase: str = typer.Option(
        "split", help="split (prefill and decode streams apart), all, prefill, decode."
    ),
    train_split: float = typer.Option(
        pf.DEFAULT_TRAIN_SPLIT, "--train-split", help="Train fraction for fitted predictors."
    ),
    start: str = typer.Option(
        "cold",
        help="cold (each sequence's caches start empty) or warm (preloaded with the first C "
        "experts the sequence uses, as in a server whose cache holds the experts in use).",
    ),
    label: list[str] = typer.Option(None, "--label", help="Only sequences with this label."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path | None = typer.Option(None, help="Write a plotly figure (.html, or .png)."),
    use_ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status messages."),
) -> None:
    """Offloading what-if: per-layer expert caches under each policy, prefetch by each predictor,
    one host-to-device link; tokens/s against GPU memory with the all-resident and no-cache
    limits."""
    pols = parse_names(policies, "policies", "lru,belady") or []
    ol.check_policies(pols)
    names = parse_names(predictors, "predictors", "previous-token,oracle")
    for n in names or ():
        if n != "none":
            pf.get_predictor(n)
    check_choice(phase, ol.PHASE_CHOICES, "phase")
    pf.check_train_split(train_split)
    ol.check_start(start)
    params: dict[str, Any] = {
        "policies": pols,
        "predictors": names,
        "widths": parse_int_list(widths, "widths") if widths else None,
        "lead": lead,
        "capacities": parse_int_list(capacities, "capacities") if capacities else None,
        "phase": phase,
        "train_split": train_split,
        "start": start,
        "labels": sorted(label) if label else None,
    }
    quiet = quiet or as_json
    with analysis_session(db, run, use_ray=use_ray, address=address, quiet=quiet) as s:
        cost = run_cost(
            s.store.run_info(s.run_id),
            expert_mb=expert_mb,
            nonexpert_gb=nonexpert_gb,
            bandwidth_gbps=bandwidth_gbps,
            tflops=tflops,
            layer_ms=layer_ms,
            bytes_per_param=bytes_per_param,
        )
        df = s.memo(ol.offload_whatif, "offload what-if", cost=cost, **params)
    s.output(
        df,
        params,
        as_json=as_json,
        plot=plot,
        figure="figures_prefetch:throughput_figure",
        title=f"Offloading what-if — run {s.run_id} ({bandwidth_gbps:g} GB/s)",
        table=lambda: print_offload(s.run_id, df, cost),
        extra={"cost": {**dataclasses.asdict(cost), "load_ms": cost.load_ps / 1e9}},
    )


def compact(x: float | None) -> str:
    """3 significant digits with a k/M suffix ('–' for none): a rate in a narrow cell."""
    if x is None:
        return "–"
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def print_offload(run_id: str, df: Any, cost: ol.OffloadCost) -> None:
    """Per phase and policy: tokens/s at each cache size (rows) for each predictor (columns),
    then the limits."""
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    con = Console()
    lay = cost.layer_ms if isinstance(cost.layer_ms, tuple) else (cost.layer_ms,)
    con.print(
        f"[bold]Costs[/bold]: {cost.note}; expert load {cost.load_ps / 1e9:.4g} ms, "
        f"MoE layer compute {sum(lay) / len(lay):.4g} ms, rest of the forward "
        f"{cost.other_ms:.4g} ms per token"
    )
    sim = df.filter(pl.col("kind") == "simulated")
    for (phase,), grp in sim.group_by(["phase"], maintain_order=True):
        where = grp["evaluated_on"][0]
        for (policy,), pol in grp.group_by(["policy"], maintain_order=True):
            t = Table(
                title=f"Tokens/s — run {run_id}, {phase}, {policy} ({where} sequences, "
                f"{pol['start'][0]} start)"
            )
            t.add_column("C", justify="right")
            t.add_column("GPU GB", justify="right")
            cols = pol.select("predictor", "width").unique(maintain_order=True).rows()
            for pred, m in cols:
                t.add_column("cache only" if pred == "none" else f"{pred}\nm={m}", justify="right")
            for (cap,), row in pol.group_by(["capacity"], maintain_order=True):
                by = {(r["predictor"], r["width"]): r["tokens_per_s"] for r in row.to_dicts()}
                cells = [compact(by.get(c)) for c in cols]
                t.add_row(str(cap), f"{row['memory_gb'][0]:.3g}", *cells)
            con.print(t)
        lim = {
            r["policy"]: r
            for r in df.filter((pl.col("kind") == "limit") & (pl.col("phase") == phase)).to_dicts()
        }
        top, low = lim.get("all-resident"), lim.get("no-cache")
        if top and low:
            con.print(
                f"{phase} limits: all resident (compute bound) {compact(top['tokens_per_s'])} "
                f"tokens/s at {top['memory_gb']:.3g} GB; no cache {compact(low['tokens_per_s'])} "
                f"tokens/s at {low['memory_gb']:.3g} GB. '–': the prefetch width does not fit "
                "(C < m)."
            )
