"""`routescope analyze cache`: expert-cache hit rates and their bounds (DESIGN §4.2).

Policies, their defaults and help come from the policy table (`routescope.analysis.policies`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from routescope.analysis.policies import SERVICES, default_policies, valid_names
from routescope.cli._analysis import (
    ADDRESS_HELP,
    RAY_HELP,
    RowProgress,
    analysis_executor,
    source_loader,
)
from routescope.cli._app import DEFAULT_DB, analyze_app
from routescope.cli._format import fmt, json_rows, parse_int_list
from routescope.core.errors import InvalidParameterError


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
    from rich.console import Console

    from routescope.analysis import cache as ca

    pols = [p.strip().lower() for p in policies.split(",") if p.strip()]
    if not pols:
        raise InvalidParameterError("no policies given; e.g. --policies lru,belady")
    caps = parse_int_list(capacities, "capacities") if capacities else None
    for value, allowed, what in (
        (scope, ca.SCOPES, "scope"),
        (service, tuple(ca.SERVICES), "service"),
        (start, ca.STARTS, "start"),
        (granularity, ca.GRANULARITIES, "granularity"),
        (phase, ca.PHASE_CHOICES, "phase"),
    ):
        if value not in allowed:
            raise InvalidParameterError(
                f"unknown {what} {value!r}; use one of {', '.join(allowed)}"
            )
    ca.check_policies(pols, service)
    labels = sorted(label) if label else None
    err = Console(stderr=True, quiet=quiet or as_json)
    from routescope.store import RoutingStore

    with (
        RoutingStore(db, read_only=True) as store,
        analysis_executor(use_ray, address, quiet or as_json) as executor,
        RowProgress(not (quiet or as_json)) as bar,
    ):
        run_id = store.resolve_run(run)
        # all phases: the analysis picks the phase per chunk, so batch steps group the same
        # sequences whatever the phase
        source = source_loader(store, run_id, "all", labels)
        params = {
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
        df = store.memo_analysis(
            run_id,
            ca.cache_hit_rates,
            source,
            progress=bar.task("cache policies"),
            executor=executor,
            **params,
        )
    if plot is not None:
        from routescope.analysis.figures_locality import cache_figure, write_figure

        title = f"Expert-cache hit rate — run {run_id} ({scope}, {service}, {start} start)"
        write_figure(cache_figure(df, title=title), plot)
        err.print(f"wrote {plot}")
    if as_json:
        out = {"run_id": run_id, **params, "rows": json_rows(df)}
        typer.echo(json.dumps(out, indent=2))
        return
    _print_cache(run_id, df, pols, scope, service, start)


def _print_cache(run_id: str, df: Any, pols: list[str], scope: str, service: str, start: str):
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
