"""Benchmark: steered generation (10 experts deactivated) against unsteered generation.

Writes benchmarks/results/steered_generation.md. Rerun:
`python benchmarks/bench_steered_generation.py` (options: --batch-size, --prompt-len, --new-tokens,
--per-layer, --repeats, --threads, --out; two to four minutes with the defaults, one torch thread).

Model: the OLMoE-1B-7B-width model of bench_collect_width.py (2 layers, hidden 2048, 64 experts of
width 1024, top-8, bf16, random weights). Spec: deactivate (mode "reroute") the 5 experts each
layer chooses most often on the prompts, 10 experts in all, so that most tokens lose an expert
and are re-routed (a cheap spec would flatter the ratio). Two generation paths, each greedy with
EOS off so steered and unsteered make the same number of tokens:
- engine: `collect_batch(max_new_tokens=N, steering=SpecEdit(lm, spec))` vs `steering=None`
  (recording routing in both; the edit runs inside the nnsight trace);
- HF: `model.generate` under `steered(lm, spec)` (forward hooks on the routers) vs plain.
Variants are interleaved; ratios are medians of per-repeat ratios of this process's CPU time (the
wall-clock ratio is shown too; see bench_collect_overhead.py for why CPU time on a shared machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from bench_collect_overhead import Timings, interleaved, write_result
from bench_collect_width import build_width_model, random_batches

from routescope.collect.engine import collect_batch
from routescope.models import LoadedModel
from routescope.steering.interventions import SpecEdit, steered
from routescope.steering.spec import SteeringSpec


def most_chosen_spec(lm: LoadedModel, prompts: list[list[int]], per_layer: int) -> SteeringSpec:
    """Deactivate the ``per_layer`` experts each MoE layer chooses most often on ``prompts``."""
    rec = collect_batch(lm, prompts)
    edits = []
    for j, layer in enumerate(lm.moe_layers):
        counts = np.bincount(rec.experts[:, j].ravel(), minlength=lm.num_experts)
        for expert in np.argsort(-counts, kind="stable")[:per_layer]:
            edits.append((layer, int(expert), "deactivate"))
    return SteeringSpec.from_edits(edits).validate(lm.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--per-layer", type=int, default=5, help="experts deactivated per layer")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "steered_generation.md")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_width_model()
    lm = LoadedModel.from_model(model, model_id="bench-olmoe-1b-7b-width")
    ids = random_batches(1, args.batch_size, args.prompt_len, seed=2)[0]
    prompts = ids.tolist()
    spec = most_chosen_spec(lm, prompts, args.per_layer)
    edit = SpecEdit(lm, spec)
    new = args.new_tokens
    no_eos = {"eos_token_id": []}
    hf_kwargs = {
        "attention_mask": torch.ones_like(ids),
        "max_new_tokens": new,
        "min_new_tokens": new,
        "do_sample": False,
        "pad_token_id": lm.pad_token_id,
    }

    def engine(steering: SpecEdit | None) -> None:
        collect_batch(lm, prompts, max_new_tokens=new, steering=steering, generation=no_eos)

    def hf_generate(with_spec: bool) -> None:
        with torch.no_grad(), steered(lm, spec if with_spec else None):
            model.generate(ids, **hf_kwargs)

    variants = {
        "engine": lambda: engine(None),
        "engine_steered": lambda: engine(edit),
        "generate": lambda: hf_generate(False),
        "generate_steered": lambda: hf_generate(True),
    }
    t = interleaved(variants, args.repeats)

    rec = collect_batch(lm, prompts, max_new_tokens=new, steering=edit, generation=no_eos)
    hits_banned = sum(
        int(np.isin(rec.experts[:, j], spec.experts(layer, "deactivate")).sum())
        for j, layer in enumerate(lm.moe_layers)
    )
    base_prefill = collect_batch(lm, prompts)  # same rows as the steered prefill below
    steered_prefill = collect_batch(lm, prompts, steering=edit)
    changed = float((base_prefill.experts != steered_prefill.experts).any(axis=-1).mean())
    tokens = args.batch_size * new
    experts = ", ".join(f"L{e.layer}:{e.expert}" for e in spec.edits)

    lines = [
        "# Steered generation (10 experts deactivated) vs unsteered generation",
        "",
        f"Model: OLMoE-1B-7B dimensions, 2 decoder layers, random weights, bfloat16 (hidden "
        f"2048, 64 experts of width 1024, top-8); CPU, {args.threads} torch thread(s). "
        f"Generation: batch {args.batch_size}, prompt {args.prompt_len}, {new} new tokens, "
        f"greedy, EOS off ({tokens} generated tokens per run). {args.repeats} interleaved "
        "repeats; ratios are medians of per-repeat CPU-time ratios.",
        f"Spec: deactivate (reroute) the {args.per_layer} most-chosen experts of each layer, "
        f"{len(spec.edits)} in all ({experts}). It re-routes {changed:.0%} of the prompt "
        f"token-layer rows; steered runs choose a deactivated expert {hits_banned} times.",
        "",
        Timings.HEADER.replace("tokens per CPU s", "generated tokens per CPU s"),
        t.row("engine `collect_batch`, unsteered", "engine", tokens),
        t.row("engine `collect_batch`, steered (`SpecEdit`)", "engine_steered", tokens),
        t.row("HF `generate`, unsteered", "generate", tokens),
        t.row("HF `generate` under `steered(lm, spec)`", "generate_steered", tokens),
        "",
        f"**Steered / unsteered, engine**: **{t.ratio('engine_steered', 'engine'):.3f}** (wall "
        f"clock {t.ratio('engine_steered', 'engine', 'wall'):.3f}); **HF generate**: "
        f"**{t.ratio('generate_steered', 'generate'):.3f}** (wall clock "
        f"{t.ratio('generate_steered', 'generate', 'wall'):.3f}).",
        "",
    ]
    write_result(
        args.out,
        lines,
        args.threads,
        "bench_steered_generation.py",
        "two to four minutes on a shared machine; see --help",
    )


if __name__ == "__main__":
    main()
