"""`routescope analyze specialization`: load, domain and vocabulary specialization, co-activation
(DESIGN §4.3), streamed from the store in bounded memory and kept in its memo of results."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from routescope.cli._analysis import ADDRESS_HELP, RAY_HELP, LazyBar, analysis_executor
from routescope.cli._app import DEFAULT_DB, analyze_app
from routescope.cli._format import fmt, json_rows

if TYPE_CHECKING:
    import polars as pl

    from routescope.analysis.specialization import DomainCounts
    from routescope.store.store import RoutingStore


@analyze_app.command("specialization")
def specialization_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file (or Parquet export) to read."),
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
    ranking_out: Path | None = typer.Option(
        None,
        "--ranking-out",
        help="Write each layer's experts ordered by load share as JSONL (for pruning tools).",
    ),
    use_ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
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
    with (
        RoutingStore(db, read_only=True) as store,
        analysis_executor(use_ray, address, quiet or as_json) as executor,
    ):
        run_id = store.resolve_run(run)
        load_only = _load_only_counts(store, run_id, vocab or plot is not None)

        # A fresh source per computation: saving a result from a read-only store reopens its
        # connection, and a source holds the connection it was made with.
        def source():  # noqa: ANN202
            return store.source(run_id, phase=phase)

        info = None if load_only is not None else source().info
        layers = None if layer is None else [layer]
        if layers is not None and info is not None:
            info.check_layers(layers)  # a bad --layer is one line before any reading
        no_domain = ""

        @cache
        def counts() -> sp.DomainCounts:  # one pass for load, summary, domain and CV
            if load_only is not None:
                return load_only
            group = by if by in sp.GROUP_FIELDS else None
            with LazyBar(err, f"counting experts per {by}") as bar:
                return sp.domain_counts(
                    source(), group, layers=layers, progress=bar, executor=executor
                )

        sel = {"phase": phase, "layers": layers}
        load = store.memo_analysis(run_id, sp.expert_load, counts, selection=sel, layers=layers)
        summary = store.memo_analysis(run_id, sp.load_summary, counts, selection=sel, layers=layers)
        try:
            domain = store.memo_analysis(
                run_id, sp.domain_specialization, counts, selection=sel, by=by, layers=layers
            )
        except InvalidParameterError as exc:
            if "group by" in str(exc):
                raise
            domain = None  # no labels: report load only, say so below
            no_domain = str(exc)
        n_groups = 0 if domain is None else domain[by].n_unique()
        cv = (
            store.memo_analysis(run_id, sp.domain_cv, counts, selection=sel, by=by, layers=layers)
            if n_groups >= 2
            else None
        )
        if ranking_out is not None:
            from routescope.analysis.rankings import write_expert_ranking

            n = write_expert_ranking(load, ranking_out, score="share")
            err.print(f"wrote {ranking_out} ({n} layers)", highlight=False)
        focus = layer if layer is not None else (info.layers[0] if info is not None else 0)
        whole = {"phase": phase, "layers": None}  # keyed like the dashboard's entries
        vocab_rows = None
        if vocab:
            with LazyBar(err, f"counting token ids at layer {focus}") as bar:
                voc = store.memo_analysis(
                    run_id,
                    sp.vocabulary_specialization,
                    source,
                    selection=whole,
                    min_count=min_count,
                    layers=[focus],
                    progress=bar,
                    executor=executor,
                )
            top_tokens = sp.expert_top_tokens(voc, top=5)
            strings = store.token_strings(run_id, top_tokens["token_id"].to_list())
            vocab_rows = top_tokens.with_columns(
                pl.col("token_id").replace_strict(strings, default=None).alias("token")
            )
        coact = None
        if plot is not None:
            with LazyBar(err, f"co-activation at layer {focus}") as bar:
                coact = store.memo_analysis(
                    run_id,
                    sp.coactivation,
                    source,
                    selection=whole,
                    layer=focus,
                    progress=bar,
                    executor=executor,
                )
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
            "load_summary": json_rows(summary.to_dicts()),
            "domain_cv": None if cv is None else json_rows(cv.to_dicts()),
            "top_specialized": None if top_rows is None else json_rows(top_rows.to_dicts()),
        }
        if vocab_rows is not None:
            out["vocabulary"] = json_rows(vocab_rows.to_dicts())
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


def _print_vocab(rows: pl.DataFrame, layer: int, min_count: int) -> None:
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


def _print_specialization(
    run_id: str,
    by: str,
    summary: pl.DataFrame,
    cv: pl.DataFrame | None,
    top_rows: pl.DataFrame | None,
) -> None:
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
            fmt(r["entropy_norm"], 3),
            fmt(r["max_over_mean"], 2),
            str(r["unused_experts"]),
            fmt(cv_by_layer.get(r["layer"]), 3),
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
            fmt(r["share"], 3),
            fmt(r["ratio_uniform"], 2),
            fmt(r["ratio_other"], 2),
        )
    console.print(t)


def _load_only_counts(store: RoutingStore, run_id: str, per_token: bool) -> DomainCounts | None:
    """A load-only run's counts (an SGLang `stat` dump) as `DomainCounts` without groups, or
    None for a run with per-token routing; --vocab and --plot need tokens and are refused."""
    from routescope.analysis.specialization import DomainCounts
    from routescope.core.errors import InvalidParameterError
    from routescope.importers.loadonly import load_counts_key

    value = store.get_meta(load_counts_key(run_id))
    if value is None:
        return None
    if per_token:
        raise InvalidParameterError(
            f"run {run_id} is load-only (per-expert counts, no per-token routing): "
            "--vocab and --plot need tokens; leave them out"
        )
    import numpy as np

    info = store.run_info(run_id)
    counts = np.asarray(value["counts"], dtype=np.int64)[None]  # one group: all tokens
    k = int(info["top_k"])
    return DomainCounts(
        by=None,
        names=(),
        layers=tuple(int(x) for x in value["layers"]),
        num_experts=int(info["num_experts"]),
        top_k=k,
        counts=counts,
        tokens=np.asarray([int(counts[0, 0].sum()) // max(k, 1)], dtype=np.int64),
    )
