"""Benchmark: recording routing at a real layer width (OLMoE-1B-7B dimensions) against a plain forward.

Writes benchmarks/results/collect_width.md. Rerun: `python benchmarks/bench_collect_width.py`
(options: --batches, --batch-size, --seq-len, --prompt-len, --new-tokens, --repeats, --threads,
--out; two to four minutes with the defaults, one torch thread).

Model: OLMoE-1B-7B's dimensions with random weights in bfloat16, cut to 2 decoder layers: hidden
2048, 16 heads, 64 experts of width 1024, top-8, vocabulary 50304 (about 1.05B parameters, 2.1 GB).
Router weights are drawn N(0, 0.02) so that routing spreads over the experts as a trained router's
does (a zero router would send every token to experts 0-7).

Prefill: the same batches of B x T token ids go through (a) the forward the engine runs, done plainly
(`attention_mask`, `position_ids`, `logits_to_keep=1`, no nnsight), (b) a plain forward with full
logits, and (c) `collect_batch`, which traces the forward with nnsight, reads both routers' outputs,
puts them in rank order, drops pads and moves the routing to the host as numpy arrays. The target
is (c) / (a) <= 1.05. Decode: `collect_batch(max_new_tokens=N)` against a plain greedy KV-cache loop
of N + 1 forwards (`bench_collect_overhead.plain_decode`); both include the prompt's prefill.
Variants are interleaved; ratios are medians of per-repeat ratios of this process's CPU time (the
wall-clock ratio is shown too; see bench_collect_overhead.py for why CPU time on a shared machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_collect_overhead import Timings, interleaved, plain_decode, write_result
from transformers import AutoConfig, AutoModelForCausalLM

from routescope.collect.engine import collect_batch
from routescope.models import LoadedModel

#: OLMoE-1B-7B (allenai/OLMoE-1B-7B-0924) dimensions, 2 of its 16 decoder layers
OLMOE_1B_7B: dict[str, object] = {
    "vocab_size": 50304,
    "hidden_size": 2048,
    "intermediate_size": 1024,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "norm_topk_prob": False,
    "max_position_embeddings": 4096,
    "pad_token_id": 1,
    "bos_token_id": None,
    "eos_token_id": 50279,
}
VOCAB = int(OLMOE_1B_7B["vocab_size"])  # type: ignore[call-overload]


def build_width_model(num_layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """Random bf16 model with OLMoE-1B-7B's layer dimensions and ``num_layers`` decoder layers."""
    cfg = AutoConfig.for_model("olmoe", num_hidden_layers=num_layers, **OLMOE_1B_7B)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 0.02)
    return model


def random_batches(n: int, batch: int, length: int, seed: int = 1) -> list[torch.Tensor]:
    """``n`` batches of ``batch`` x ``length`` random token ids (no special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB - 100, (batch, length), generator=gen) for _ in range(n)]


def engine_forward(model: torch.nn.Module, ids: torch.Tensor, **extra: object) -> object:
    """The prefill forward the engine runs, without nnsight (no padding: all rows full)."""
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    return model(
        input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, **extra
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "collect_width.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_width_model()
    lm = LoadedModel.from_model(model, model_id="bench-olmoe-1b-7b-width")
    params = sum(p.numel() for p in model.parameters())
    batches = random_batches(args.batches, args.batch_size, args.seq_len)
    as_lists = [b.tolist() for b in batches]
    prompts = batches[0][:, : args.prompt_len]
    no_eos = {"eos_token_id": []}

    def plain() -> None:
        with torch.no_grad():
            for b in batches:
                engine_forward(model, b, use_cache=False, logits_to_keep=1)

    def plain_full_logits() -> None:
        with torch.no_grad():
            for b in batches:
                engine_forward(model, b, use_cache=False)

    def collect() -> None:
        for b in as_lists:
            collect_batch(lm, b)

    def plain_dec() -> None:
        with torch.no_grad():
            plain_decode(model, prompts, args.new_tokens)

    def collect_dec() -> None:
        collect_batch(lm, prompts.tolist(), max_new_tokens=args.new_tokens, generation=no_eos)

    variants = {
        "plain": plain,
        "plain_full": plain_full_logits,
        "collect": collect,
        "plain_decode": plain_dec,
        "collect_decode": collect_dec,
    }
    t = interleaved(variants, args.repeats)
    rec = collect_batch(lm, as_lists[0])
    hit = [len(set(rec.experts[:, j].ravel().tolist())) for j in range(rec.experts.shape[1])]
    tokens = args.batches * args.batch_size * args.seq_len
    dec_tokens = args.batch_size * args.new_tokens
    ratio = t.ratio("collect", "plain")
    verdict = "meets" if ratio <= 1.05 else "misses"

    lines = [
        "# Collection at OLMoE-1B-7B width: `collect_batch` vs a plain forward",
        "",
        f"Model: OLMoE-1B-7B dimensions, 2 decoder layers, random weights, bfloat16 "
        f"({params / 1e9:.2f}B parameters): hidden 2048, 16 heads, 64 experts of width 1024, "
        f"top-8, vocabulary {VOCAB}; CPU, {args.threads} torch thread(s). Routing spread: "
        f"{' and '.join(map(str, hit))} of 64 experts chosen in layers 0 and 1 of one batch.",
        f"Prefill: {args.batches} batches of {args.batch_size} x {args.seq_len} tokens "
        f"({tokens} tokens); decode: batch {args.batch_size}, prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens ({dec_tokens} generated, prompt prefill included). "
        f"{args.repeats} interleaved repeats; ratios are medians of per-repeat CPU-time ratios.",
        "",
        Timings.HEADER,
        t.row("plain forward as the engine runs it (logits_to_keep=1)", "plain", tokens),
        t.row("plain forward, full logits", "plain_full", tokens),
        t.row("collect_batch (prefill)", "collect", tokens),
        t.row("plain greedy decode loop (generated tokens)", "plain_decode", dec_tokens),
        t.row("collect_batch (decode, generated tokens)", "collect_decode", dec_tokens),
        "",
        f"**Prefill ratio** collect / plain forward (same forward): **{ratio:.3f}** ({verdict} "
        f"the target <= 1.05; wall clock {t.ratio('collect', 'plain', 'wall'):.3f}; against a "
        f"full-logits forward {t.ratio('collect', 'plain_full'):.3f}).",
        f"**Decode ratio** collect / plain greedy KV-cache loop: "
        f"**{t.ratio('collect_decode', 'plain_decode'):.3f}** (wall clock "
        f"{t.ratio('collect_decode', 'plain_decode', 'wall'):.3f}).",
        "",
    ]
    write_result(
        args.out,
        lines,
        args.threads,
        "bench_collect_width.py",
        "two to four minutes on a shared machine; see --help for sizes",
    )


if __name__ == "__main__":
    main()
