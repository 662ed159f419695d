"""`routescope localize`: which experts carry a behaviour, with honest statistics (DESIGN §4.4).

Also the helpers the streaming analysis commands share: a progress bar that appears only when
something is computed, the `--ray` executor, and a fingerprint of a run that a memoized result
of another run depends on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from routescope.cli._analysis import (
    ADDRESS_HELP,
    RAY_HELP,
    LazyBar,
    analysis_executor,
    run_fingerprint,
)
from routescope.cli._app import DEFAULT_DB, app
from routescope.cli._format import fmt, json_rows

if TYPE_CHECKING:
    import polars as pl

    from routescope.core.source import TraceSource


@app.command("localize")
def localize_cmd(
    run: str = typer.Argument("latest", help="Run id or name ('latest' for the newest)."),
    target: str = typer.Option(
        ..., help="Target token set: label:NAME, set:NAME, run:RUN, target."
    ),
    control: str = typer.Option(
        ..., help="Control token set: label:NAME, set:NAME, run:RUN, target, or rest."
    ),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file (or Parquet export) to read."),
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
    ranking_out: Path | None = typer.Option(
        None,
        "--ranking-out",
        help="Write each layer's experts ordered by risk difference as JSONL (for pruning tools).",
    ),
    use_ray: bool = typer.Option(False, "--ray", help=RAY_HELP),
    address: str | None = typer.Option(None, "--address", help=ADDRESS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Rank (layer, expert) by risk difference p1 − p2 between target and control tokens, with a
    prompt bootstrap CI, a prompt permutation p-value and Benjamini–Hochberg q-values. The run is
    read chunk by chunk (bounded memory); the result is kept in the store for next time."""
    from rich.console import Console

    from routescope.analysis import localization as lo
    from routescope.store import RoutingStore

    lo.parse_spec(target)
    lo.parse_spec(control)
    err = Console(stderr=True, quiet=quiet or as_json)
    with (
        RoutingStore(db, read_only=True) as store,
        analysis_executor(use_ray, address, quiet or as_json) as executor,
    ):
        run_id = store.resolve_run(run)
        needs_base = not (target.startswith("run:") and control.startswith("run:"))
        others: dict[str, list[Any]] = {}

        def load_run(name: str) -> TraceSource:
            rid = store.resolve_run(name)
            src = store.source(rid, phase=phase)
            others[name] = run_fingerprint(store, rid, src)
            return src

        base = store.source(run_id, phase=phase) if needs_base else None
        t_set, c_set = lo.token_sets_from_specs(base, target, control, load_run=load_run)
        params: dict[str, Any] = {
            "target": target,
            "control": control,
            "phase": phase,
            "n_boot": n_boot,
            "n_perm": n_perm,
            "weight": weight,
            "seed": seed,
        }
        if others:  # run: specs read other runs, whose writes do not clear this run's entries
            params["other_runs"] = others

        def compute() -> pl.DataFrame:
            with LazyBar(err, "localizing (reading, then resampling prompts)") as bar:
                return lo.localize(
                    t_set,
                    c_set,
                    n_boot=n_boot,
                    n_perm=n_perm,
                    seed=seed,
                    weight=weight,
                    progress=bar,
                    executor=executor,
                )

        result = store.memo_result(run_id, "localize", params, compute)
    shown = result if top <= 0 else result.head(top)
    if spec_out is not None:
        spec = lo.steering_spec_from_ranking(result, top=top if top > 0 else 10**9, q_max=q_max)
        spec_out.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        err.print(f"wrote {spec_out} ({len(spec['edits'])} edits)", highlight=False)
    if ranking_out is not None:
        from routescope.analysis.rankings import write_expert_ranking

        n = write_expert_ranking(result, ranking_out)
        err.print(f"wrote {ranking_out} ({n} layers)", highlight=False)
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
        typer.echo(json.dumps({**head, "results": json_rows(shown.to_dicts())}, indent=2))
    else:
        _print_localize(head, shown)
    if plot is not None:
        from routescope.analysis import figures_experts as fx

        fx.write_html([fx.rd_heatmap(result, title=f"{target} vs {control}: score")], plot)
        err.print(f"wrote {plot}", highlight=False)


def _print_localize(head: dict[str, Any], shown: pl.DataFrame) -> None:
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
            cells += [f"{r['rd']:+.3f}", fmt(r["w1"], 3), fmt(r["w2"], 3), f"{r['wd']:+.3f}"]
        else:
            cells += [fmt(r["p1"], 3), fmt(r["p2"], 3), f"{r['rd']:+.3f}"]
        ci = (
            "–"
            if r["ci_low"] is None or math.isnan(r["ci_low"])
            else f"{r['ci_low']:+.3f}…{r['ci_high']:+.3f}"
        )
        q = f"{r['q_value']:.3g}"
        cells += [ci, f"{r['p_value']:.3g}", f"[bold]{q}[/bold]" if r["q_value"] < 0.05 else q]
        t.add_row(*cells)
    Console().print(t)
