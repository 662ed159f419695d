"""CLI commands: `routescope analyze consistency` and `routescope analyze cache`.

Thin shells over routescope.analysis.consistency / cache: parse options, load the run's Trace
(only on a result-cache miss), print a rich table, JSON, or write a plotly figure.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import typer

from routescope.cli._app import DEFAULT_DB, analyze_app
from routescope.core.errors import InvalidParameterError


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,2,4' or '1-64' or '1-8,16,32' -> sorted unique ints; one clear error line otherwise."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise InvalidParameterError(
                f"cannot read {what} {text!r}: use integers like 1,2,4 or a range like 1-64"
            ) from None
    if not out:
        raise InvalidParameterError(f"no {what} given; use integers like 1,2,4 or 1-64")
    return sorted(out)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _rows(df: Any) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in df.to_dicts()
    ]


def _trace_loader(store: Any, run_id: str, phase: str, labels: list[str] | None, err: Any):
    @cache
    def trace():  # noqa: ANN202 - loaded once, only on a cache miss
        with err.status(f"loading run {run_id}…"):
            return store.load_trace(run_id, phase=phase, labels=labels)

    return trace


@analyze_app.command("consistency")
def consistency_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to read."),
    segments: str = typer.Option("4,16,64,256", help="Segment lengths L, e.g. 4,16,64,256 or 1-8."),
    phase: str = typer.Option("all", help="all, prefill or decode."),
    label: list[str] = typer.Option(None, "--label", help="Only sequences with this label."),
    seed: int = typer.Option(0, help="Seed of the shuffled-order baseline."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path | None = typer.Option(None, help="Write a plotly figure (.html, or .png)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No status messages."),
) -> None:
    """Local routing consistency: repetition rates (Mixtral's Table 5), SRP with its floor and
    shuffled-order baseline, and the segment-oracle SCH (Liang et al. 2025)."""
    from rich.console import Console

    from routescope.analysis import consistency as cons
    from routescope.store import RoutingStore

    segs = cons.check_segment_lengths(parse_int_list(segments, "segment lengths"))
    if phase not in ("all", "prefill", "decode"):
        raise InvalidParameterError(f"unknown phase {phase!r}; use one of all, prefill, decode")
    labels = sorted(label) if label else None
    err = Console(stderr=True, quiet=quiet or as_json)
    with RoutingStore(db, read_only=True) as store:
        run_id = store.resolve_run(run)
        trace = _trace_loader(store, run_id, phase, labels, err)
        sel = {"phase": phase, "labels": labels}
        rep = store.memo_analysis(run_id, cons.repetition_rates, trace, **sel)
        with err.status("SRP…"):
            srp = store.memo_analysis(
                run_id, cons.srp, trace, segment_lengths=segs, shuffled_seed=seed, **sel
            )
        with err.status("SCH…"):
            sch = store.memo_analysis(run_id, cons.sch, trace, segment_lengths=segs, **sel)
    if plot is not None:
        from routescope.analysis.figures_locality import srp_figure, write_figure

        write_figure(srp_figure(srp, title=f"SRP — run {run_id}"), plot)
        err.print(f"wrote {plot}")
    if as_json:
        out = {
            "run_id": run_id,
            "phase": phase,
            "labels": labels,
            "repetition": _rows(rep),
            "srp": _rows(srp),
            "sch_segment_oracle": _rows(sch),
        }
        typer.echo(json.dumps(out, indent=2))
        return
    _print_consistency(run_id, rep, srp, sch)


def _print_consistency(run_id: str, rep: Any, srp: Any, sch: Any) -> None:
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    con = Console()
    pooled = rep.filter(pl.col("layer").is_null()).to_dicts()[0]
    t = Table(title=f"Repetition between consecutive tokens — run {run_id} (all layers)")
    for c in ("measure", "rate", "chance"):
        t.add_column(c, justify="right" if c != "measure" else "left")
    t.add_row("top-1 expert repeats", _fmt(pooled["top1_repeat"]), _fmt(pooled["top1_chance"]))
    t.add_row("top-2 sets share one", _fmt(pooled["top2_share"]), _fmt(pooled["top2_chance"]))
    t.add_row("top-k overlap share", _fmt(pooled["topk_overlap"]), _fmt(pooled["topk_chance"]))
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
            _fmt(r["srp"]),
            _fmt(r["c_star"]),
            _fmt(r["g_hat"], 2),
            _fmt(r["floor"]),
            _fmt(r.get("srp_shuffled")),
            _fmt(r.get("locality_gap")),
            _fmt(sch_k[0] if len(sch_k) else None),
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
            _fmt(vals.filter(pl.col("segment_length") == s)["srp"].to_list()[0]) for s in seg_list
        ]
        t.add_row(str(layer), _fmt(rep_by_layer.get(layer)), *cells)
    con.print(t)


@analyze_app.command("cache")
def cache_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to read."),
    policies: str = typer.Option(
        "lru,lfu,fifo,static,lookahead-16,belady,belady-bypass",
        help="Comma list of lru, lfu, fifo, static, lookahead-<L>, belady, belady-bypass.",
    ),
    capacities: str | None = typer.Option(
        None, help="Experts per layer: 1,2,4 or 1-64 (default: 1..E)."
    ),
    scope: str = typer.Option("layer", help="layer (a cache per layer) or global (pooled)."),
    service: str = typer.Option("stream", help="stream, token or simultaneous."),
    start: str = typer.Option("cold", help="cold or warm (first C distinct experts preloaded)."),
    granularity: str = typer.Option("token", help="token, or step (batch steps)."),
    batch_size: int | None = typer.Option(None, help="Sequences per batch for --granularity step."),
    phase: str = typer.Option(
        "split", help="split (prefill and decode apart), all, prefill, decode."
    ),
    label: list[str] = typer.Option(None, "--label", help="Only sequences with this label."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path | None = typer.Option(None, help="Write a plotly figure (.html, or .png)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or status messages."),
) -> None:
    """Expert-cache hit rates: LRU, LFU, FIFO, static, lookahead-L, Belady/MIN and belady-bypass
    at every capacity, exact on every sequence (Belady is the bound under stream service)."""
    from rich.console import Console

    from routescope.analysis import cache as ca
    from routescope.store import RoutingStore

    pols = [p.strip().lower() for p in policies.split(",") if p.strip()]
    if not pols:
        raise InvalidParameterError("no policies given; e.g. --policies lru,belady")
    for p in pols:
        ca.parse_policy(p)
    caps = parse_int_list(capacities, "capacities") if capacities else None
    for value, allowed, what in (
        (scope, ca.SCOPES, "scope"),
        (service, tuple(ca.SERVICES), "service"),
        (start, ca.STARTS, "start"),
        (granularity, ca.GRANULARITIES, "granularity"),
        (phase, ("split", "all", "prefill", "decode"), "phase"),
    ):
        if value not in allowed:
            raise InvalidParameterError(
                f"unknown {what} {value!r}; use one of {', '.join(allowed)}"
            )
    labels = sorted(label) if label else None
    err = Console(stderr=True, quiet=quiet or as_json)
    with RoutingStore(db, read_only=True) as store:
        run_id = store.resolve_run(run)
        load_phase = phase if phase in ("prefill", "decode") else "all"
        trace = _trace_loader(store, run_id, load_phase, labels, err)
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
            run_id, ca.cache_hit_rates, trace, progress=not (quiet or as_json), **params
        )
    if plot is not None:
        from routescope.analysis.figures_locality import cache_figure, write_figure

        title = f"Expert-cache hit rate — run {run_id} ({scope}, {service}, {start} start)"
        write_figure(cache_figure(df, title=title), plot)
        err.print(f"wrote {plot}")
    if as_json:
        out = {"run_id": run_id, **params, "rows": _rows(df)}
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
            t.add_row(str(cap), _fmt(row["rho"][0], 2), *[_fmt(by_pol.get(p)) for p in pols])
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
                _fmt(v["hit_rate"].min()),
                _fmt(v["hit_rate"].mean()),
                _fmt(v["hit_rate"].max()),
                str(worst),
            )
        con.print(t)
