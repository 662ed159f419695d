"""`routescope analyze cache`: expert-cache hit rates and their bounds (DESIGN §4.2).

Policies, their defaults and help come from the policy table (`routescope.analysis.policies`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from routescope.analysis.policies import SERVICES, default_policies, valid_names
from routescope.cli._analysis import ADDRESS_HELP, RAY_HELP, analysis_session
from routescope.cli._app import DEFAULT_DB, analyze_app
from routescope.cli._format import check_choice, fmt, parse_int_list, parse_names


@analyze_app.command("cache")
def cache_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file (or Parquet export) to read."),
    policies: str = typer.Option(
        ",".join(default_policies()), help=f"Comma list of {valid_names()}."
    ),
    capacities: str | None = typer.Option(
        None, help="Experts per layer: 1,2,4 or 1-64 (default: 1..E)."
    ),
    scope: str = typer.Option("layer", help="layer (a cache per layer) or global (pooled)."),
    service: str = typer.Option("stream", help=f"Service model: {', '.join(SERVICES)}."),
    start: str = typer.Option("cold", help="cold or warm (first C distinct experts preloaded)."),
    granularity: str = typer.Option("token", help="token, or step (batch steps)."),
    batch_size: int | None = typer.Option(None, help="Sequences per batch for --granularity step."),
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
    """Expert-cache hit rates of the cache policies (--policies; the table is in
    routescope.analysis.policies) at every capacity, exact on every sequence (Belady is the bound
    under stream service)."""
    from routescope.analysis import cache as ca

    pols = parse_names(policies, "policies", "lru,belady") or []
    caps = parse_int_list(capacities, "capacities") if capacities else None
    check_choice(scope, ca.SCOPES, "scope")
    check_choice(service, ca.SERVICES, "service")
    check_choice(start, ca.STARTS, "start")
    check_choice(granularity, ca.GRANULARITIES, "granularity")
    check_choice(phase, ca.PHASE_CHOICES, "phase")
    ca.check_policies(pols, service)
    labels = sorted(label) if label else None
    params: dict[str, Any] = {
        "policies": pols,
        "capacities": caps,
        "scope": scope,
        "service": service,
        "start": start,
        "granularity": granularity,
        "batch_size": batch_size,
        "phase": phase,
        "labels": labels,
    }
    # all phases are read: the analysis picks the phase per chunk, so batch steps group the same
    # sequences whatever the phase
    quiet = quiet or as_json
    with analysis_session(db, run, use_ray=use_ray, address=address, quiet=quiet) as s:
        df = s.memo(ca.cache_hit_rates, "cache policies", **params)
    s.output(
        df,
        params,
        as_json=as_json,
        plot=plot,
        figure="figures_locality:cache_figure",
        title=f"Expert-cache hit rate — run {s.run_id} ({scope}, {service}, {start} start)",
        table=lambda: _print_cache(s.run_id, df, pols, scope, service, start),
    )


def _print_cache(
    run_id: str, df: Any, pols: list[str], scope: str, service: str, start: str
) -> None:
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    con = Console()
    pooled = df.filter(pl.col("layer").is_null())
    what = "one cache of C·#layers slots" if scope == "global" else "all layers pooled"
    for (phase,), grp in pooled.group_by(["phase"], maintain_order=True):
        t = Table(title=f"Hit rate — run {run_id}, {phase}, {what} ({service}, {start} start)")
        t.add_column("C", justify="right")
        t.add_column("ρ=C/k", justify="right")
        for p in pols:
            t.add_column(p, justify="right")
        for (cap,), row in grp.group_by(["capacity"], maintain_order=True):
            by_pol = dict(zip(row["policy"], row["hit_rate"], strict=True))
            t.add_row(str(cap), fmt(row["rho"][0], 2), *[fmt(by_pol.get(p)) for p in pols])
        con.print(t)
    per = df.filter(pl.col("layer").is_not_null())
    if per.height == 0:
        return
    for (phase,), grp in per.group_by(["phase"], maintain_order=True):
        caps = sorted(grp["capacity"].unique().to_list())
        k = round(caps[0] / grp["rho"][0]) if grp["rho"][0] else caps[0]
        focus = k if k in caps else caps[len(caps) // 2]
        sel = grp.filter(pl.col("capacity") == focus)
        t = Table(title=f"Per layer at C={focus}, {phase}: min / mean / max over layers")
        t.add_column("policy")
        for c in ("min", "mean", "max", "worst layer"):
            t.add_column(c, justify="right")
        for p in pols:
            v = sel.filter(pl.col("policy") == p).drop_nulls("hit_rate")
            if v.height == 0:
                t.add_row(p, "–", "–", "–", "–")
                continue
            worst = v.sort("hit_rate")["layer"][0]
            t.add_row(
                p,
                fmt(v["hit_rate"].min()),
                fmt(v["hit_rate"].mean()),
                fmt(v["hit_rate"].max()),
                str(worst),
            )
        con.print(t)
