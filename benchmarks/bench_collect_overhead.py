"""Benchmark: cost of recording routing with `collect_batch` against a plain model forward.

Writes benchmarks/results/collect_overhead.md. Rerun: `python benchmarks/bench_collect_overhead.py`
(options: --batches, --batch-size, --seq-len, --repeats, --new-tokens, --out).

Model: a random tiny OLMoE-shaped model (hidden 128, 4 layers, E 16, k 4) on CPU. Prefill: the same
batches of B x T token ids go through (a) a plain `model(input_ids, attention_mask)` forward,
(b) the same forward with `logits_to_keep=1` (what the engine asks for), and (c) `collect_batch`,
which traces the forward with nnsight, reads every router's output, puts the routing in rank order,
drops pads and moves it to the host as numpy arrays. Decode: `collect_batch(max_new_tokens=N)`
against a plain greedy KV-cache loop of N + 1 forwards (the engine also feeds the last token).
Timings interleave the variants and take the median over repeats (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from routescope.collect.engine import collect_batch  # noqa: E402
from routescope.models import LoadedModel  # noqa: E402


def build_model() -> torch.nn.Module:
    """Random OLMoE-shaped model: hidden 128, 4 layers, 16 experts, top-4."""
    cfg = AutoConfig.for_model(
        "olmoe",
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=16,
        num_experts_per_tok=4,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 0.5)
    return model


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_decode(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> None:
    """Greedy KV-cache decode with N + 1 plain forwards (same work as the engine's loop)."""
    mask = torch.ones_like(ids)
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
    )
    last = pos[:, -1:]
    for _ in range(new_tokens):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        last = last + 1
        out = model(
            input_ids=nxt,
            attention_mask=mask,
            position_ids=last,
            past_key_values=out.past_key_values,
            use_cache=True,
            logits_to_keep=1,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "collect_overhead.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = build_model()
    lm = LoadedModel.from_model(model, model_id="bench-olmoe")
    gen = torch.Generator().manual_seed(1)
    batches = [
        torch.randint(3, 1024, (args.batch_size, args.seq_len), generator=gen)
        for _ in range(args.batches)
    ]
    as_lists = [b.tolist() for b in batches]

    def run_plain() -> None:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b, attention_mask=torch.ones_like(b))

    def run_plain_keep1() -> None:
        with torch.no_grad():
            for b in batches:
                model(input_ids=b, attention_mask=torch.ones_like(b), logits_to_keep=1)

    def run_collect() -> None:
        for b in as_lists:
            collect_batch(lm, b)

    dec_ids = batches[0][:, : args.seq_len // 4]

    def run_plain_decode() -> None:
        with torch.no_grad():
            plain_decode(model, dec_ids, args.new_tokens)

    def run_collect_decode() -> None:
        collect_batch(
            lm, dec_ids.tolist(), max_new_tokens=args.new_tokens, generation={"eos_token_id": []}
        )

    variants = {
        "plain": run_plain,
        "plain_keep1": run_plain_keep1,
        "collect": run_collect,
        "plain_decode": run_plain_decode,
        "collect_decode": run_collect_decode,
    }
    for fn in variants.values():  # warm-up (nnsight wrapper, allocator)
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batches * args.batch_size * args.seq_len
    ratio_plain = med["collect"] / med["plain"]
    ratio_keep1 = med["collect"] / med["plain_keep1"]
    ratio_decode = med["collect_decode"] / med["plain_decode"]

    lines = [
        "# Collection overhead: `collect_batch` vs a plain forward",
        "",
        f"Model: random OLMoE-shaped, hidden 128, 4 layers, E 16, k 4, vocab 1024, float32, CPU, "
        f"{args.threads} torch thread(s).",
        f"Prefill: {args.batches} batches of {args.batch_size} x {args.seq_len} tokens "
        f"({tokens} tokens); decode: batch {args.batch_size}, prompt {dec_ids.shape[1]}, "
        f"{args.new_tokens} new tokens. Median of {args.repeats} interleaved repeats.",
        "",
        "| variant | median s | tokens/s |",
        "|---|---:|---:|",
        f"| plain forward (full logits) | {med['plain']:.3f} | {tokens / med['plain']:,.0f} |",
        f"| plain forward, logits_to_keep=1 | {med['plain_keep1']:.3f} | "
        f"{tokens / med['plain_keep1']:,.0f} |",
        f"| collect_batch (prefill) | {med['collect']:.3f} | {tokens / med['collect']:,.0f} |",
        f"| plain greedy decode loop | {med['plain_decode']:.3f} | |",
        f"| collect_batch (decode) | {med['collect_decode']:.3f} | |",
        "",
        f"**Prefill overhead ratio** collect / plain forward: **{ratio_plain:.3f}** "
        f"(vs the logits_to_keep=1 forward the engine runs: {ratio_keep1:.3f}; target <= 1.15).",
        f"**Decode overhead ratio** collect / plain greedy loop: **{ratio_decode:.3f}**.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}. Load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine: ratios are the "
        "meaningful numbers).",
        "",
        "Rerun: `python benchmarks/bench_collect_overhead.py` (see --help for sizes).",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
