"""Benchmark: cost of recording routing with `collect_batch` against a plain model forward.

Writes benchmarks/results/collect_overhead.md. Rerun: `python benchmarks/bench_collect_overhead.py`
(options: --batches, --batch-size, --seq-len, --repeats, --new-tokens, --out).

Model: a random tiny OLMoE-shaped model (hidden 128, 4 layers, E 16, k 4) on CPU. Prefill: the same
batches of B x T token ids go through (a) a plain `model(input_ids, attention_mask)` forward,
(b) the same forward with `logits_to_keep=1` (what the engine asks for), and (c) `collect_batch`,
which traces the forward with nnsight, reads every router's output, puts the routing in rank order,
drops pads and moves it to the host as numpy arrays. Decode: `collect_batch(max_new_tokens=N)`
against a plain greedy KV-cache loop of N + 1 forwards (the engine also feeds the last token).
Timings interleave the variants; each is taken on two clocks, wall and this process's CPU time,
and reported as the median over repeats. Ratios are the median of the per-repeat ratios (each
repeat runs the variants back to back), on CPU time: on a shared machine other processes stretch
the wall clock of whichever variant they overlap, but not the CPU time this process spends.

The plain decode loop passes the KV cache under the keyword the model's forward takes
(`routescope.models.compat`), as the engine does, so neither side pays transformers' rename shim.
`describe_machine`, `interleaved`, `Timings` and `plain_decode` are shared with the other collection
benchmarks (bench_collect_width.py, bench_steered_generation.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from routescope.collect.engine import collect_batch  # noqa: E402
from routescope.models import LoadedModel  # noqa: E402
from routescope.models.compat import cache_kwarg, output_cache  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(threads: int) -> str:
    """One line naming the machine: CPU model, cores, torch threads, versions, load average."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()}), {threads} torch "
        f"thread(s), Python {platform.python_version()}, torch {torch.__version__}. Load average "
        f"at the end: {load} (a shared machine: the ratios are the meaningful numbers)."
    )


@dataclass
class Timings:
    """Seconds per variant and repeat on two clocks: ``wall`` and ``cpu`` (this process)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str, clock: str = "cpu") -> float:
        return statistics.median(getattr(self, clock)[name])

    def ratio(self, num: str, den: str, clock: str = "cpu") -> float:
        """Median over repeats of ``num / den`` (each repeat ran them back to back)."""
        series = getattr(self, clock)
        return statistics.median(a / b for a, b in zip(series[num], series[den], strict=True))

    def row(self, label: str, name: str, count: float | None = None) -> str:
        """A table row: CPU and wall medians, items per CPU second, the wall range."""
        cpu, wall = self.median(name), self.median(name, "wall")
        rate = f"{count / cpu:,.1f}" if count else ""
        lo, hi = min(self.wall[name]), max(self.wall[name])
        return f"| {label} | {cpu:.3f} | {wall:.3f} | {rate} | {lo:.3f}-{hi:.3f} |"

    HEADER = (
        "| variant | CPU s (median) | wall s (median) | tokens per CPU s | wall min-max s |\n"
        "|---|---:|---:|---:|---:|"
    )


def interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> Timings:
    """Run every variant ``repeats`` times, interleaved (so load on a shared machine hits all
    alike), after ``warmup`` untimed rounds (nnsight wrapper, allocator)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    out = Timings({k: [] for k in variants}, {k: [] for k in variants})
    for _ in range(repeats):
        for name, fn in variants.items():
            wall, cpu = timed(fn)
            out.wall[name].append(wall)
            out.cpu[name].append(cpu)
    return out


def write_result(out: str, lines: list[str], threads: int, script: str, note: str) -> None:
    """Write (and print) a results file: ``lines``, then the machine and how to rerun."""
    lines = [
        *lines,
        describe_machine(threads),
        "",
        f"Rerun: `python benchmarks/{script}` ({note}), then `python benchmarks/report.py` to "
        "rebuild BENCHMARKS.md.",
        "",
    ]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print("\n".join(lines))


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


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, CPU seconds of this process)`` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def plain_decode(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> None:
    """Greedy KV-cache decode with N + 1 plain forwards (same work as the engine's loop), the
    cache passed under the keyword the forward takes (no FutureWarning from the rename shim)."""
    cache_name = cache_kwarg(model)
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
            **{cache_name: output_cache(out)},
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
    t = interleaved(variants, args.repeats)
    tokens = args.batches * args.batch_size * args.seq_len
    dec_tokens = args.batch_size * args.new_tokens

    lines = [
        "# Collection overhead: `collect_batch` vs a plain forward",
        "",
        f"Model: random OLMoE-shaped, hidden 128, 4 layers, E 16, k 4, vocab 1024, float32, CPU, "
        f"{args.threads} torch thread(s).",
        f"Prefill: {args.batches} batches of {args.batch_size} x {args.seq_len} tokens "
        f"({tokens} tokens); decode: batch {args.batch_size}, prompt {dec_ids.shape[1]}, "
        f"{args.new_tokens} new tokens. {args.repeats} interleaved repeats; ratios are medians "
        "of per-repeat CPU-time ratios.",
        "",
        Timings.HEADER,
        t.row("plain forward (full logits)", "plain", tokens),
        t.row("plain forward, logits_to_keep=1", "plain_keep1", tokens),
        t.row("collect_batch (prefill)", "collect", tokens),
        t.row("plain greedy decode loop", "plain_decode", dec_tokens),
        t.row("collect_batch (decode)", "collect_decode", dec_tokens),
        "",
        f"**Prefill overhead ratio** collect / plain forward: **{t.ratio('collect', 'plain'):.3f}** "
        f"(vs the logits_to_keep=1 forward the engine runs: "
        f"{t.ratio('collect', 'plain_keep1'):.3f}; target <= 1.15; wall clock: "
        f"{t.ratio('collect', 'plain', 'wall'):.3f}).",
        f"**Decode overhead ratio** collect / plain greedy loop: "
        f"**{t.ratio('collect_decode', 'plain_decode'):.3f}** (wall clock: "
        f"{t.ratio('collect_decode', 'plain_decode', 'wall'):.3f}).",
        "",
    ]
    write_result(args.out, lines, args.threads, "bench_collect_overhead.py", "see --help for sizes")


if __name__ == "__main__":
    main()
