"""CLI commands: `routescope analyze specialization` and `routescope localize`.

Thin shells: token-set specs, statistics and figures live in routescope.analysis.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import typer

from routescope.cli._app import DEFAULT_DB, analyze_app, app


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _jsonable(rows: list[dict]) -> list[dict]:
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]


@analyze_app.command("specialization")
def specialization_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to read."),
    by: str = typer.Option("label", help="Group tokens by 'label' or 'prompt_set'."),
    layer: int | None = typer.Option(None, help="Only this MoE layer (model layer number)."),
    phase: str = typer.Option("all", help="prefill, decode or all."),
    top: int = typer.Option(5, help="Most specialized experts to list per group."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    plot: Path | None = typer.Option(
        None, help="Write plotly HTML (load, domain specialization, co-activation)."
    ),
    vocab: bool = typer.Option(
        False,
        "--vocab",
        help="Also list the tokens each expert dominates (at --layer or the first).",
    ),
    min_count: int = typer.Option(10, help="--vocab: only token ids seen at least this often."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No status messages."),
) -> None:
    """Expert load balance and domain specialization (OLMoE's share of a group's tokens per expert
    against the uniform level k/E; moe-lrc's coefficient of variation across groups); with
    --vocab, OLMoE's vocabulary specialization."""
    import polars as pl
    from rich.console import Console

    from routescope.analysis import specialization as sp
    from routescope.core.errors import InvalidParameterError
    from routescope.store import RoutingStore

    err = Console(stderr=True, quiet=quiet or as_json)
    with RoutingStore(db, read_only=True) as store:
        run_id = store.resolve_run(run)
        layers = None if layer is None else [layer]
        no_domain = ""

        @cache
        def trace():  # noqa: ANN202 - loaded once, only on a cache miss
            with err.status(f"loading run {run_id}…"):
                return store.load_trace(run_id, phase=phase, layers=layers)

        sel = {"phase": phase, "layers": None if layer is None else [layer]}
        load = store.memo_analysis(run_id, sp.expert_load, trace, selection=sel)
        summary = store.memo_analysis(run_id, sp.load_summary, trace, selection=sel)
        try:
            domain = store.memo_analysis(
                run_id, sp.domain_specialization, trace, selection=sel, by=by
            )
        except InvalidParameterError as exc:
            if "group by" in str(exc):
                raise
            domain = None  # no labels: report load only, say so below
            no_domain = str(exc)
        n_groups = 0 if domain is None else domain[by].n_unique()
        cv = (
            store.memo_analysis(run_id, sp.domain_cv, trace, selection=sel, by=by)
            if n_groups >= 2
            else None
        )
        focus = layer if layer is not None else store.moe_layers(run_id)[0]
        vocab_rows = None
        if vocab:
            voc = store.memo_result(
                run_id,
                "spec.vocab",
                {"phase": phase, "layer": focus, "min_count": min_count},
                lambda: sp.vocabulary_specialization(
                    trace().select_layers([focus]), min_count=min_count
                ),
            )
            strings = store.token_strings(run_id)
            vocab_rows = sp.expert_top_tokens(voc, top=5).with_columns(
                pl.col("token_id").replace_strict(strings, default=None).alias("token")
            )
        coact = sp.coactivation(trace(), focus) if plot is not None else None
    top_rows = (
        None
        if domain is None
        else domain.sort(["ratio_uniform", "layer", "expert"], descending=[True, False, False])
        .group_by(by, maintain_order=True)
        .head(top)
        .sort([by, "ratio_uniform"], descending=[False, True])
    )
    if as_json:
        out = {
            "run_id": run_id,
            "by": by,
            "load_summary": _jsonable(summary.to_dicts()),
            "domain_cv": None if cv is None else _jsonable(cv.to_dicts()),
            "top_specialized": None if top_rows is None else _jsonable(top_rows.to_dicts()),
        }
        if vocab_rows is not None:
            out["vocabulary"] = _jsonable(vocab_rows.to_dicts())
        typer.echo(json.dumps(out, indent=2))
    else:
        _print_specialization(run_id, by, summary, cv, top_rows)
        if vocab_rows is not None:
            _print_vocab(vocab_rows, focus, min_count)
        if domain is None:
            err.print(f"no domain specialization: {no_domain}", highlight=False)
    if plot is not None:
        from routescope.analysis import figures_experts as fx

        figs = [fx.load_heatmap(load)]
        if domain is not None:
            show_layer = (
                layer
                if layer is not None
                else int(
                    domain.group_by("layer")
                    .agg(pl.col("ratio_uniform").max())
                    .sort("ratio_uniform", descending=True)["layer"][0]
                )
            )
            figs.append(fx.domain_heatmap(domain, show_layer, by=by))
        if coact is not None:
            figs.append(fx.coactivation_heatmap(coact))
        fx.write_html(figs, plot)
        err.print(f"wrote {plot}", highlight=False)


def _print_vocab(rows, layer: int, min_count: int) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"tokens each expert dominates at layer {layer} "
        f"(share of the token's occurrences routed to it; ids seen ≥ {min_count}×)"
    )
    t.add_column("expert", justify="right")
    t.add_column("top tokens")
    for expert in sorted(set(rows["expert"].to_list())):
        sub = rows.filter(rows["expert"] == expert)
        cells = [
            f"{(tok if tok is not None else '#' + str(tid))!r} {share:.2f}"
            for tid, tok, share in zip(sub["token_id"], sub["token"], sub["share"], strict=True)
        ]
        t.add_row(str(expert), ", ".join(cells))
    Console().print(t)


def _print_specialization(run_id, by, summary, cv, top_rows) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"expert load, run {run_id}")
    for c in ("layer", "entropy / log E", "max / mean", "unused experts", f"CV across {by}"):
        t.add_column(c, justify="right")
    cv_by_layer = {} if cv is None else dict(zip(cv["layer"], cv["cv_mean"], strict=True))
    for r in summary.iter_rows(named=True):
        t.add_row(
            str(r["layer"]),
            _fmt(r["entropy_norm"], 3),
            _fmt(r["max_over_mean"], 2),
            str(r["unused_experts"]),
            _fmt(cv_by_layer.get(r["layer"]), 3),
        )
    console.print(t)
    if top_rows is None:
        return
    t = Table(title=f"most specialized experts per {by} (share of its tokens vs uniform k/E)")
    for c in (by, "layer", "expert", "tokens", "share", "× uniform", "× other"):
        t.add_column(c, justify="left" if c == by else "right")
    for r in top_rows.iter_rows(named=True):
        t.add_row(
            str(r[by]),
            str(r["layer"]),
            str(r["expert"]),
            f"{r['n_tokens']:,}",
            _fmt(r["share"], 3),
            _fmt(r["ratio_uniform"], 2),
            _fmt(r["ratio_other"], 2),
        )
    console.print(t)


@app.command("localize")
def localize_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    target: str = typer.Option(
        ..., help="Target token set: label:NAME, set:NAME, run:RUN, target."
    ),
    control: str = typer.Option(
        ..., help="Control token set: label:NAME, set:NAME, run:RUN, target, or rest."
    ),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file to read."),
    top: int = typer.Option(20, help="Rows to show (0 = all)."),
    n_boot: int = typer.Option(1000, help="Prompt bootstrap resamples for the CI."),
    n_perm: int = typer.Option(1000, help="Prompt-label permutations for the p-value."),
    weight: bool = typer.Option(False, "--weight", help="Score by mean gate weight, not rate."),
    seed: int = typer.Option(0, help="Random seed (results are reproducible)."),
    phase: str = typer.Option("all", help="prefill, decode or all."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    plot: Path | None = typer.Option(None, help="Write a plotly HTML heatmap (layer × expert)."),
    spec_out: Path | None = typer.Option(
        None, help="Write a steering spec (JSON) deactivating the top experts with q ≤ --q-max."
    ),
    q_max: float = typer.Option(0.05, help="q-value cut for --spec-out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Rank (layer, expert) by risk difference p1 − p2 between target and control tokens, with a
    prompt bootstrap CI, a prompt permutation p-value and Benjamini–Hochberg q-values."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from routescope.analysis import localization as lo
    from routescope.store import RoutingStore

    lo.parse_spec(target)
    lo.parse_spec(control)
    err = Console(stderr=True, quiet=quiet)
    with RoutingStore(db, read_only=True) as store:
        run_id = store.resolve_run(run)
        needs_base = not (target.startswith("run:") and control.startswith("run:"))

        def load_run(name: str):  # noqa: ANN202
            rid = store.resolve_run(name)  # outside the spinner: a bad name is one clean line
            with err.status(f"loading run {rid}…"):
                return store.load_trace(rid, phase=phase)

        base = load_run(run_id) if needs_base else None
        t_set, c_set = lo.token_sets_from_specs(base, target, control, load_run=load_run)
        params = {
            "target": target,
            "control": control,
            "phase": phase,
            "n_boot": n_boot,
            "n_perm": n_perm,
            "weight": weight,
            "seed": seed,
        }

        def compute():  # noqa: ANN202
            with Progress(
                TextColumn("resampling prompts"),
                BarColumn(),
                MofNCompleteColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task("resample", total=n_boot + n_perm)
                return lo.localize(
                    t_set,
                    c_set,
                    n_boot=n_boot,
                    n_perm=n_perm,
                    seed=seed,
                    weight=weight,
                    progress=lambda n: bar.advance(task, n),
                )

        # A run: spec reads another run whose writes would not clear this run's cache entries.
        uses_other_run = "run:" in target or "run:" in control
        result = (
            compute()
            if uses_other_run
            else store.memo_result(run_id, "localize", params, compute)
        )
    shown = result if top <= 0 else result.head(top)
    if spec_out is not None:
        spec = lo.steering_spec_from_ranking(result, top=top if top > 0 else 10**9, q_max=q_max)
        spec_out.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        err.print(f"wrote {spec_out} ({len(spec['edits'])} edits)", highlight=False)
    head = {
        "run_id": run_id,
        "target": target,
        "control": control,
        "paired": bool(result["paired"][0]),
        "score": "weight" if weight else "rate",
        "n1": int(result["n1"][0]),
        "n2": int(result["n2"][0]),
        "prompts1": int(result["prompts1"][0]),
        "prompts2": int(result["prompts2"][0]),
        "n_boot": n_boot,
        "n_perm": n_perm,
    }
    if as_json:
        typer.echo(json.dumps({**head, "results": _jsonable(shown.to_dicts())}, indent=2))
    else:
        _print_localize(head, shown)
    if plot is not None:
        from routescope.analysis import figures_experts as fx

        fx.write_html([fx.rd_heatmap(result, title=f"{target} vs {control}: score")], plot)
        err.print(f"wrote {plot}", highlight=False)


def _print_localize(head: dict, shown) -> None:  # noqa: ANN001
    from rich import box
    from rich.console import Console
    from rich.table import Table

    design = "paired (same prompts)" if head["paired"] else "unpaired"
    title = (
        f"{head['target']} (N1={head['n1']:,} tokens, {head['prompts1']} prompts) vs "
        f"{head['control']} (N2={head['n2']:,}, {head['prompts2']} prompts), {design}"
    )
    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    weight = head["score"] == "weight"
    cols = ["rank", "layer", "expert"]
    cols += ["RD", "w1", "w2", "WD"] if weight else ["p1", "p2", "RD"]
    cols += ["95% CI", "p", "q"]
    for c in cols:
        t.add_column(c, justify="right", no_wrap=True)
    for r in shown.iter_rows(named=True):
        cells = [str(r["rank"]), str(r["layer"]), str(r["expert"])]
        if weight:
            cells += [f"{r['rd']:+.3f}", _fmt(r["w1"], 3), _fmt(r["w2"], 3), f"{r['wd']:+.3f}"]
        else:
            cells += [_fmt(r["p1"], 3), _fmt(r["p2"], 3), f"{r['rd']:+.3f}"]
        ci = (
            "–"
            if r["ci_low"] is None or math.isnan(r["ci_low"])
            else f"{r['ci_low']:+.3f}…{r['ci_high']:+.3f}"
        )
        q = f"{r['q_value']:.3g}"
        cells += [ci, f"{r['p_value']:.3g}", f"[bold]{q}[/bold]" if r["q_value"] < 0.05 else q]
        t.add_row(*cells)
    Console().print(t)
