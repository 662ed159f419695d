"""`routescope steer`: the effect of a steering spec.

Thin shells over routescope.steering: specs come from a .toml/.json file or a named preset in the
store; effects are log-likelihood changes against a random-expert baseline, or side-by-side
generations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from routescope.cli._app import DEFAULT_DB, app
from routescope.cli._format import signed
from routescope.core.errors import InvalidParameterError

if TYPE_CHECKING:
    from rich.console import Console

    from routescope.core.shape import ModelShape
    from routescope.models.loading import LoadedModel
    from routescope.steering.spec import SteeringSpec


def _load_spec(spec: Path | None, preset: str | None, db: str) -> tuple[SteeringSpec, str]:
    """The spec named on the command line and a short description of where it came from."""
    from routescope.steering.presets import get_preset
    from routescope.steering.spec import SteeringSpec
    from routescope.store import RoutingStore

    if (spec is None) == (preset is None):
        raise InvalidParameterError("give exactly one of --spec FILE or --preset NAME")
    if spec is not None:
        return SteeringSpec.from_file(spec), str(spec)
    with RoutingStore(db, read_only=True) as store:
        p = get_preset(store.con, preset or "")
    return p.spec, f"preset {p.name}"


def _load_model(model: str) -> LoadedModel:
    from routescope.collect.runner import resolve_model_path
    from routescope.models import load_model

    return load_model(resolve_model_path(model))


def _shape_of(model: str) -> ModelShape:
    """A model's (MoE layers, E, k) from its config alone, without loading weights."""
    from routescope.collect.runner import resolve_model_path
    from routescope.models.loading import config_shape

    return config_shape(resolve_model_path(model))


@app.command("steer")
def steer_cmd(
    spec: Path | None = typer.Option(None, "--spec", help="Steering spec file (.toml or .json)."),
    preset: str | None = typer.Option(None, "--preset", help="Name of a stored steering preset."),
    model: str = typer.Option(
        "demo", "--model", "-m", help="Hub id or local path (default: demo)."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Generate from this prompt, side by side."
    ),
    eval_file: Path | None = typer.Option(
        None, "--eval", help="Prompt set (.jsonl/.csv/.parquet/.txt) to measure log-likelihood on."
    ),
    split: str | None = typer.Option(None, help="Only rows of the eval file with this split."),
    random_baseline_draws: int = typer.Option(
        10, "--random-baseline", help="Random-expert draws for the baseline (0 = none)."
    ),
    seed: int = typer.Option(0, help="Seed for the random baseline and sampling."),
    max_new_tokens: int = typer.Option(30, help="Tokens to generate for --prompt."),
    sampled: bool = typer.Option(False, "--sampled", help="Sample instead of greedy decoding."),
    batch_size: int = typer.Option(8, help="Texts per forward pass."),
    max_length: int | None = typer.Option(None, help="Truncate eval texts to this many tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    db: str = typer.Option(DEFAULT_DB, help="DuckDB file holding presets (for --preset)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or status."),
) -> None:
    """Measure what a steering spec does: log-likelihood change on --eval texts against random
    experts of the same layers, or steered vs unsteered generations from --prompt."""
    from rich.console import Console

    if (prompt is None) == (eval_file is None):
        raise InvalidParameterError("give exactly one of --prompt TEXT or --eval FILE")
    if random_baseline_draws < 0:
        raise InvalidParameterError("--random-baseline must be >= 0")
    the_spec, source = _load_spec(spec, preset, db)
    the_spec.validate(_shape_of(model))  # a bad edit fails before any weights load
    err = Console(stderr=True, quiet=quiet or as_json)
    out = Console()
    if quiet or as_json:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with err.status(f"loading {model}…"):
        lm = _load_model(model)
    run = _Steer(lm, the_spec, source, as_json=as_json, quiet=quiet, out=out, err=err)
    if prompt is not None:
        _side_by_side(run, prompt, max_new_tokens=max_new_tokens, sampled=sampled, seed=seed)
    elif eval_file is not None:
        _evaluate(
            run,
            eval_file,
            split=split,
            draws=random_baseline_draws,
            seed=seed,
            batch_size=batch_size,
            max_length=max_length,
        )


@dataclass(frozen=True)
class _Steer:
    """What both modes of `routescope steer` use: the model, the spec and where it came from,
    and how to print (JSON or tables on `out`, status on `err`)."""

    lm: LoadedModel
    spec: SteeringSpec
    source: str
    as_json: bool
    quiet: bool
    out: Console
    err: Console


def _side_by_side(
    run: _Steer, prompt: str, *, max_new_tokens: int, sampled: bool, seed: int
) -> None:
    from rich.table import Table

    from routescope.steering.evaluate import side_by_side

    with run.err.status("generating…"):
        sbs = side_by_side(
            run.lm, run.spec, prompt, max_new_tokens=max_new_tokens, sampled=sampled, seed=seed
        )
    if run.as_json:
        payload = {
            "spec": run.spec.to_dict(),
            "source": run.source,
            "prompt": prompt,
            "sampled": sampled,
            "base": sbs.base_text,
            "steered": sbs.steered_text,
            "tokens": sbs.tokens.to_dicts(),
        }
        run.out.print_json(json.dumps(payload))
        return
    run.out.print(
        f"[bold]steering[/bold] {run.source}: {len(run.spec.edits)} edit(s), mode {run.spec.mode}"
    )
    run.out.print(f"[bold]prompt[/bold]   {prompt!r}")
    run.out.print(f"[bold]base[/bold]     {sbs.base_text!r}")
    run.out.print(f"[bold]steered[/bold]  {sbs.steered_text!r}")
    for which in ("base", "steered"):
        rows = sbs.tokens.filter(sbs.tokens["which"] == which)
        table = Table(title=f"{which} continuation: log p per token")
        for col in ("step", "token", "log p base", "log p steered", "change"):
            table.add_column(col, justify="left" if col == "token" else "right")
        for r in rows.iter_rows(named=True):
            table.add_row(
                str(r["step"]),
                repr(r["token"]),
                f"{r['logp_base']:.3f}",
                f"{r['logp_steered']:.3f}",
                signed(r["change"], 3),
            )
        run.out.print(table)


def _evaluate(
    run: _Steer,
    eval_file: Path,
    *,
    split: str | None,
    draws: int,
    seed: int,
    batch_size: int,
    max_length: int | None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from routescope.collect.prompts import read_prompt_set
    from routescope.steering.evaluate import EvalSet, loglik_change, random_baseline

    prompts = read_prompt_set(eval_file, split=split)
    ev = EvalSet.build(run.lm, prompts, max_length=max_length)
    with run.err.status(f"scoring {len(ev)} texts, unsteered and steered…"):
        res = loglik_change(run.lm, run.spec, ev, batch_size=batch_size)
    rb = None
    if draws > 0 and not run.spec.is_empty:
        with Progress(
            TextColumn("random baseline"),
            BarColumn(),
            MofNCompleteColumn(),
            console=run.err,
            disable=run.quiet or run.as_json,
            transient=True,
        ) as bar:
            task = bar.add_task("draws", total=draws)
            rb = random_baseline(
                run.lm,
                run.spec,
                ev,
                draws=draws,
                seed=seed,
                batch_size=batch_size,
                progress=lambda n: bar.update(task, completed=n),
            )
    by_label = res.by_label()
    labels = [x for x in by_label["label"].to_list() if x is not None]
    baseline: dict[str, Any] | None = None
    if rb is not None:
        baseline = {"all": rb.summary()}
        for lab in labels:
            baseline[lab] = rb.summary(lab)
    if run.as_json:
        payload = {
            "spec": run.spec.to_dict(),
            "source": run.source,
            "eval": str(eval_file),
            "texts": len(ev),
            "overall": {
                "base": res.mean_base,
                "steered": res.mean_steered,
                "change": res.mean_change,
            },
            "by_label": by_label.to_dicts(),
            "random_baseline": baseline,
        }
        run.out.print_json(json.dumps(payload))
        return
    table = Table(
        title=f"mean token log-likelihood change, {run.source} ({len(run.spec.edits)} edits, {run.spec.mode})"
    )
    cols = ["label", "texts", "base", "steered", "change"]
    if baseline is not None:
        cols += ["random mean ± std", "random min..max", "change / random"]
    for c in cols:
        table.add_column(c, justify="left" if c == "label" else "right")

    def row(name: str, texts: int, b: float, s: float, c: float, key: str) -> list[str]:
        cells = [name, str(texts), f"{b:.4f}", f"{s:.4f}", signed(c)]
        if baseline is not None:
            bs = baseline[key]
            ratio = c / bs["mean"] if bs["mean"] != 0 else float("nan")
            cells += [
                f"{bs['mean']:+.4f} ± {bs['std']:.4f}",
                f"{bs['min']:+.4f}..{bs['max']:+.4f}",
                "–" if math.isnan(ratio) else f"{ratio:.2f}",
            ]
        return cells

    for r in by_label.iter_rows(named=True):
        if r["label"] is not None and len(labels) > 1:
            table.add_row(
                *row(r["label"], r["texts"], r["base"], r["steered"], r["change"], r["label"])
            )
    table.add_row(*row("all", len(ev), res.mean_base, res.mean_steered, res.mean_change, "all"))
    run.out.print(table)
    if rb is not None:
        run.out.print(
            f"random baseline: {rb.summary()['draws']} draws of {len(run.spec.edits)} experts from "
            f"the same layers, same actions (seed {seed})"
        )
