"""Benchmark: the cost of speculative-gate recording (`collect --speculative 2`) against collection
without it.

Writes benchmarks/results/speculative.md. Rerun: `python benchmarks/bench_speculative.py`
(options: --batches, --batch-size, --seq-len, --new-tokens, --repeats, --threads, --out; about two
minutes with the defaults, one torch thread).

Models (random weights, float32, CPU), one per routing style the recording ranks with:
- OLMoE-shaped (the model of bench_collect_overhead.py): hidden 128, 4 layers, E 16, k 4, softmax
  top-k; m = 2k = 8.
- DeepSeek-V3-shaped: hidden 128, 4 layers of which the first is dense, E 64, k 8, sigmoid scores
  with the selection-only bias, 8 groups of which 4 are kept; m = 2k = 16. Its layer-1 rankings
  for d = 1 read the dense layer's MLP input.

Prefill: batches of B x T token ids go through `collect_batch` with and without `speculative=2`
(the target: ratio <= 1.2), and through both followed by the store write (`RoutingStore.write_batch`
of the batch into a fresh DuckDB file, then `finish_run`, which clusters the run's rows), which is
what `routescope collect` adds. Every prefill variant runs one batch per call, the variants taking
turns batch by batch over the same batches (repeats x batches calls each). Decode (for
information): `collect_batch(max_new_tokens=N)` with and without, in the same turns. Ratios are
medians of per-call ratios of this process's CPU time (see bench_collect_overhead.py for why CPU
time on a shared machine); the wall-clock ratio is shown too.

What the toy models exaggerate: the recording costs, per MoE layer and token, D router projections
and D rankings over E experts (a top-m, with the group choice for grouped routing), independent of
the expert width; the forward costs k experts of hidden x intermediate each. These models have
hidden 128 and tiny experts, so the ratio here is far above what a real model of the same E pays
(DeepSeek-V3: hidden 7168, experts of 2048).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from bench_collect_overhead import Timings, build_model, interleaved, write_result
from transformers import AutoConfig, AutoModelForCausalLM

from routescope.collect.engine import collect_batch
from routescope.core.records import BatchRouting
from routescope.models import LoadedModel
from routescope.store.store import RoutingStore

D = 2


def build_deepseek_v3() -> torch.nn.Module:
    """Random DeepSeek-V3-shaped model: hidden 128, 4 layers (first dense), E 64 in 8 groups
    (4 kept), k 8, one shared expert, a random selection bias."""
    cfg = AutoConfig.for_model(
        "deepseek_v3",
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        moe_intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=64,
        num_experts_per_tok=8,
        n_shared_experts=1,
        n_group=8,
        topk_group=4,
        first_k_dense_replace=1,
        kv_lora_rank=32,
        q_lora_rank=32,
        qk_rope_head_dim=16,
        qk_nope_head_dim=16,
        v_head_dim=16,
        norm_topk_prob=True,
        routed_scaling_factor=2.5,
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
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.1)
    return model


def write_store(lm: LoadedModel, results: list[BatchRouting], root: Path, tag: str) -> None:
    """Write the batches as one run into a fresh DuckDB file (as the runner does), then finish."""
    db = root / f"{tag}.duckdb"
    db.unlink(missing_ok=True)
    with RoutingStore(str(db)) as store:
        store.create_or_resume_run(
            "bench",
            name="bench",
            model_id=lm.model_id,
            family=lm.family,
            num_layers=lm.num_layers,
            moe_layers=list(lm.moe_layers),
            num_experts=lm.num_experts,
            top_k=lm.top_k,
        )
        sid = 0
        for batch in results:
            meta = [{"seq_id": sid + j} for j in range(batch.num_sequences)]
            sid += batch.num_sequences
            store.write_batch("bench", meta, batch)
        store.finish_run("bench")


def variants_for(
    lm: LoadedModel, batches: list[list[list[int]]], dec: list[list[int]], new: int, root: Path
) -> dict[str, Callable[[], object]]:
    """One call of a prefill variant runs one batch (the next in turn, the same sequence of
    batches for every variant), so variants alternate every batch and shared-machine noise falls
    on both sides of each ratio alike."""

    def cycling(spec: int, store: bool) -> Callable[[], object]:
        turn = iter(range(1 << 30))

        def run() -> object:
            batch = batches[next(turn) % len(batches)]
            rec = collect_batch(lm, batch, speculative=spec)
            if store:
                write_store(lm, [rec], root, f"s{spec}")
            return rec

        return run

    def decode(spec: int) -> BatchRouting:
        opts = {"eos_token_id": []}
        return collect_batch(lm, dec, max_new_tokens=new, generation=opts, speculative=spec)

    return {
        "collect": cycling(0, False),
        "collect_spec": cycling(D, False),
        "store": cycling(0, True),
        "store_spec": cycling(D, True),
        "decode": lambda: decode(0),
        "decode_spec": lambda: decode(D),
    }


def section(name: str, lm: LoadedModel, t: Timings, tokens: int, dec_tokens: int) -> list[str]:
    m = min(2 * lm.top_k, lm.num_experts)
    return [
        f"## {name}",
        "",
        f"{len(lm.moe_layers)} MoE layers of {lm.num_layers}, E {lm.num_experts}, k {lm.top_k}; "
        f"speculative D = {D}, m = {m}.",
        "",
        Timings.HEADER,
        t.row("collect_batch (prefill, per batch)", "collect", tokens),
        t.row("collect_batch, speculative=2 (prefill, per batch)", "collect_spec", tokens),
        t.row("collect_batch + store write (prefill, per batch)", "store", tokens),
        t.row("collect_batch + store write, speculative=2 (per batch)", "store_spec", tokens),
        t.row("collect_batch (decode)", "decode", dec_tokens),
        t.row("collect_batch, speculative=2 (decode)", "decode_spec", dec_tokens),
        "",
        f"**Prefill ratio** with / without speculative recording: "
        f"**{t.ratio('collect_spec', 'collect'):.3f}** (target <= 1.2; wall clock "
        f"{t.ratio('collect_spec', 'collect', 'wall'):.3f}). With the store write: "
        f"{t.ratio('store_spec', 'store'):.3f}. Decode: {t.ratio('decode_spec', 'decode'):.3f}.",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speculative.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(1)
    batches = [
        torch.randint(3, 1024, (args.batch_size, args.seq_len), generator=gen).tolist()
        for _ in range(args.batches)
    ]
    dec = [row[: args.seq_len // 4] for row in batches[0]]
    tokens = args.batches * args.batch_size * args.seq_len
    dec_tokens = args.batch_size * args.new_tokens
    lines = [
        "# Speculative-gate recording: `collect --speculative 2` vs collection without it",
        "",
        f"Random float32 models on CPU, {args.threads} torch thread(s). Prefill: {args.batches} "
        f"batches of {args.batch_size} x {args.seq_len} tokens ({tokens} tokens); decode: batch "
        f"{args.batch_size}, prompt {args.seq_len // 4}, {args.new_tokens} new tokens. "
        f"{args.repeats} repeats over the batches, prefill variants taking turns batch by batch "
        "(decode: one call per turn too); ratios are medians of per-call CPU-time ratios. "
        "The recording reads each layer's router input inside the traced forward and ranks the "
        "next D layers' routers on it there (an ad hoc call of the router, or for DeepSeek its "
        "projection alone); only int16 rankings are kept.",
        "",
    ]
    models = {
        "OLMoE-shaped (softmax top-k)": build_model(),
        "DeepSeek-V3-shaped (grouped sigmoid with selection bias, dense first layer)": (
            build_deepseek_v3()
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            lm = LoadedModel.from_model(model, model_id=f"bench-{model.config.model_type}")
            variants = variants_for(lm, batches, dec, args.new_tokens, Path(tmp))
            t = interleaved(variants, args.repeats * args.batches)
            lines += section(name, lm, t, tokens // args.batches, dec_tokens)
    write_result(args.out, lines, args.threads, "bench_speculative.py", "see --help for sizes")


if __name__ == "__main__":
    main()
