"""The demo steering experiment: localize each domain's experts, switch them off, measure.

For each domain D of the demo model: record routing on the train split of every domain, rank all
(layer, expert) by risk difference of D's tokens against the other domains' (`localize`), deactivate
the top N (reroute mode), and measure the mean token log-likelihood change on the held-out split of
every domain, against N random experts of the same layers (`random_baseline`, several draws). The
claim checked: D's held-out log-likelihood falls at least twice as much as with random experts, and
more than any other domain's does.

Run: ``python -m routescope.steering.experiment`` (writes reports/steering_demo.md).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from routescope.collect.engine import collect_batch
from routescope.collect.prompts import Prompt, read_prompt_set, tokenize_prompts
from routescope.core.trace import Trace
from routescope.models.loading import LoadedModel
from routescope.steering.evaluate import (
    EvalSet,
    SideBySide,
    column_mean,
    decode_text,
    loglik_change,
    random_baseline,
    side_by_side,
)
from routescope.steering.spec import SteeringSpec

__all__ = ["DomainResult", "ExperimentResult", "collect_trace", "run_experiment", "main"]


def collect_trace(
    lm: LoadedModel, prompts: Sequence[Prompt], batch_size: int = 16, max_length: int = 128
) -> Trace:
    """Routing of ``prompts`` (prefill only) as an in-memory Trace labelled by prompt label."""
    enc = tokenize_prompts(prompts, lm.require_tokenizer("collecting"), max_length=max_length)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].input_ids))  # less padding
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        out = collect_batch(lm, [enc[i].input_ids for i in chunk])
        weights = out.require_weights("the steering experiment")
        for b, i in enumerate(chunk):
            sl = out.sequence(b)
            parts[i] = (out.experts[sl], weights[sl])
    return Trace.from_sequences(
        [parts[i][0] for i in range(len(enc))],
        num_experts=lm.num_experts,
        weights=[parts[i][1] for i in range(len(enc))],
        labels=[p.label for p in prompts],
        layers=lm.moe_layers,
    )


@dataclass
class DomainResult:
    """One domain's localized spec and its effect on every domain's held-out texts."""

    domain: str
    spec: SteeringSpec
    change: dict[str, float]  # label -> mean log-likelihood change (steered − base)
    random: dict[str, dict[str, float]]  # label -> mean/std/min/max over draws
    example: SideBySide | None = None  # greedy generation from a held-out prompt of the domain

    @property
    def target_drop(self) -> float:
        return -self.change[self.domain]

    @property
    def random_drop(self) -> float:
        return -self.random[self.domain]["mean"]

    @property
    def ratio(self) -> float:
        """Target drop / random mean drop; NaN when the random experts cause no mean drop (no
        meaningful ratio: a rise of the domain's own log-likelihood must not read as infinite)."""
        return self.target_drop / self.random_drop if self.random_drop > 0 else float("nan")

    @property
    def max_other_drop(self) -> float:
        return max(-v for k, v in self.change.items() if k != self.domain)

    @property
    def passes(self) -> bool:
        """The domain's own log-likelihood falls (drop > 0), at least twice as much as with random
        experts (any drop beats a random baseline with no mean drop), and more than any other
        domain's. A rise never passes, whatever the random baseline did."""
        if not self.target_drop > 0:
            return False
        if self.random_drop > 0 and self.target_drop < 2.0 * self.random_drop:
            return False
        return self.target_drop > self.max_other_drop


@dataclass
class ExperimentResult:
    domains: list[DomainResult]
    base: dict[str, float]  # label -> mean base log-likelihood
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> pl.DataFrame:
        rows = []
        for d in self.domains:
            r = d.random[d.domain]
            rows.append(
                {
                    "domain": d.domain,
                    "experts_off": len(d.spec.edits),
                    "layers": ",".join(str(x) for x in d.spec.layers()),
                    "target_change": d.change[d.domain],
                    "random_mean": r["mean"],
                    "random_std": r["std"],
                    "random_min": r["min"],
                    "random_max": r["max"],
                    "ratio": d.ratio,
                    "max_other_change": -d.max_other_drop,
                    "passes": d.passes,
                }
            )
        return pl.DataFrame(rows)


def run_experiment(
    lm: LoadedModel,
    prompt_files: dict[str, Path],
    n_off: int = 10,
    n_train: int = 40,
    n_eval: int = 20,
    draws: int = 10,
    seed: int = 0,
    max_length: int = 128,
    batch_size: int = 16,
    n_boot: int = 50,
    n_perm: int = 50,
    example_tokens: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ExperimentResult:
    """The experiment over ``prompt_files`` (domain -> JSONL with split train/heldout).

    ``example_tokens`` > 0 adds, per domain, a greedy side-by-side generation of that many tokens
    from the start of the domain's first held-out prompt."""
    from routescope.analysis.localization import localize, split_labels, steering_spec_from_ranking

    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    train: list[Prompt] = []
    held: list[Prompt] = []
    for dom, path in prompt_files.items():
        train += read_prompt_set(path, label=dom, split="train")[:n_train]
        held += read_prompt_set(path, label=dom, split="heldout")[:n_eval]
    say(f"recording routing of {len(train)} train prompts")
    trace = collect_trace(lm, train, batch_size=batch_size, max_length=max_length)
    ev = EvalSet.build(lm, held, max_length=max_length)
    domains = []
    for i, dom in enumerate(prompt_files):
        say(
            f"{dom} ({time.perf_counter() - t0:.0f} s): localize, deactivate top {n_off}, evaluate with {draws} random draws"
        )
        target, control = split_labels(trace, dom)
        ranking = localize(target, control, n_boot=n_boot, n_perm=n_perm, seed=seed)
        spec = SteeringSpec.from_dict(
            steering_spec_from_ranking(ranking, top=n_off, q_max=None), source=f"{dom} ranking"
        )
        res = loglik_change(lm, spec, ev, batch_size=batch_size)
        rb = random_baseline(lm, spec, ev, draws=draws, seed=seed + 1000 * i, batch_size=batch_size)
        by = res.by_label()
        change = dict(zip(by["label"].to_list(), by["change"].to_list(), strict=True))
        rand = {lab: rb.summary(lab) for lab in change}
        example = None
        if example_tokens > 0:
            first = next(p for p in held if p.label == dom)
            tokenizer = lm.require_tokenizer("the example generation")
            ids = tokenizer(first.text or "", add_special_tokens=False)["input_ids"]
            prompt = decode_text(tokenizer, ids[: max(1, min(12, len(ids) // 2))], special=True)
            example = side_by_side(lm, spec, prompt, max_new_tokens=example_tokens)
        domains.append(DomainResult(dom, spec, change, rand, example))
    by = loglik_change(lm, SteeringSpec(), ev).by_label()
    base = dict(zip(by["label"].to_list(), by["base"].to_list(), strict=True))
    settings = {
        "n_off": n_off,
        "n_train": n_train,
        "n_eval": n_eval,
        "draws": draws,
        "seed": seed,
        "max_length": max_length,
        "routed_experts": lm.num_experts * len(lm.moe_layers),
        "model": lm.model_id,
    }
    return ExperimentResult(domains, base, settings, time.perf_counter() - t0)


def _inline(text: str) -> str:
    """Text fit for an inline code span on one line."""
    return text.replace("`", "'").replace("\n", "⏎").strip() or "(empty)"


def _ratio(d: DomainResult) -> str:
    """Target drop over the random mean drop; a random baseline that raises log-likelihood on
    average has no meaningful ratio."""
    if d.random_drop <= 0:
        return "n/a (random: no mean drop)"
    return f"{d.ratio:.1f}×"


def report_markdown(result: ExperimentResult) -> str:
    """The experiment as a short markdown report."""
    s = result.settings
    lines = [
        "# Steering the demo model: switching off a domain's experts",
        "",
        "Generated by `python -m routescope.steering.experiment` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{result.seconds:.0f} s).",
        "",
        f"For each domain: routing of {s['n_train']} train prompts per domain was recorded; "
        "every (layer, expert) was ranked by risk difference (share of the domain's tokens "
        "selecting it minus the share of the other domains' tokens, `routescope localize`); the "
        f"top {s['n_off']} of {s['routed_experts']} routed experts "
        f"({100 * s['n_off'] / s['routed_experts']:.1f}%) were deactivated (reroute mode: the "
        "next-best expert fills the slot). Effect = change of mean token log-likelihood (nats) on "
        f"{s['n_eval']} held-out prompts per domain (max {s['max_length']} tokens). Baseline: "
        f"{s['draws']} draws of the same number of random experts per layer, from the experts of "
        "the same layers not in the spec.",
        "",
        "| domain | layers | Δ loglik, that domain | random: mean ± std [min, max] | ratio | "
        "largest Δ of another domain | passes |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in result.domains:
        r = d.random[d.domain]
        lines.append(
            f"| {d.domain} | {','.join(str(x) for x in d.spec.layers())} | "
            f"{d.change[d.domain]:+.3f} | {r['mean']:+.3f} ± {r['std']:.3f} "
            f"[{r['min']:+.3f}, {r['max']:+.3f}] | {_ratio(d)} | {-d.max_other_drop:+.3f} | "
            f"{'yes' if d.passes else 'no'} |"
        )
    labels = list(result.base)
    lines += [
        "",
        "Ratio = the domain's drop / the random baseline's mean drop. Passes = the domain's own "
        "log-likelihood falls (Δ < 0), its drop is at least twice the random baseline's mean drop "
        "(any drop, if the random experts cause no mean drop) and larger than the drop of every "
        "other domain. Δ are in nats per token; negative = less likely.",
        "",
        "## Full matrix: Δ mean token log-likelihood (rows: experts switched off; columns: "
        "held-out domain)",
        "",
        "| off \\ eval | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
        "| (base loglik) | " + " | ".join(f"{result.base[x]:.3f}" for x in labels) + " |",
    ]
    for d in result.domains:
        lines.append(f"| {d.domain} | " + " | ".join(f"{d.change[x]:+.3f}" for x in labels) + " |")
    lines += [
        "",
        "## Experts switched off",
        "",
    ]
    for d in result.domains:
        experts = ", ".join(f"L{e.layer}/E{e.expert}" for e in d.spec.edits)
        lines.append(f"- **{d.domain}**: {experts}")
    examples = [d for d in result.domains if d.example is not None]
    if examples:
        lines += [
            "",
            "## Side by side (greedy), from the start of a held-out prompt of the domain",
            "",
            "Mean Δ log p = mean over the steered continuation's tokens of log p(steered model) − "
            "log p(unsteered model).",
            "",
        ]
        for d in examples:
            ex = d.example
            assert ex is not None
            rows = ex.tokens.filter(ex.tokens["which"] == "steered")
            mean = column_mean(rows["change"])
            lines += [
                f"- **{d.domain}** experts off — prompt `{_inline(ex.prompt)}`",
                f"  - unsteered: `{_inline(ex.base_text)}`",
                f"  - steered: `{_inline(ex.steered_text)}` (mean Δ log p {mean:+.2f})",
            ]
    lines += [
        "",
        "Rerun: `python -m routescope.steering.experiment "
        f"--n-off {s['n_off']} --n-train {s['n_train']} --n-eval {s['n_eval']} --draws "
        f"{s['draws']} --seed {s['seed']}`",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-off", type=int, default=10)
    parser.add_argument("--n-train", type=int, default=40)
    parser.add_argument("--n-eval", type=int, default=20)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--example-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--output", default="reports/steering_demo.md")
    args = parser.parse_args(argv)

    import torch

    from routescope.models import load_model
    from routescope.models.demo import DEMO_DOMAINS, DEMO_MODEL_PATH, DEMO_PROMPTS_DIR

    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    lm = load_model(str(DEMO_MODEL_PATH))
    files = {d: DEMO_PROMPTS_DIR / f"{d}.jsonl" for d in DEMO_DOMAINS}
    result = run_experiment(
        lm,
        files,
        n_off=args.n_off,
        n_train=args.n_train,
        n_eval=args.n_eval,
        draws=args.draws,
        seed=args.seed,
        max_length=args.max_length,
        example_tokens=args.example_tokens,
        progress=lambda m: print(m, flush=True),
    )
    result.settings["model"] = "routescope demo model"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_markdown(result), encoding="utf-8")
    print(result.table())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
