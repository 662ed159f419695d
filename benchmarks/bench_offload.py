"""Throughput of the offloading what-if simulator on a 1M-token DeepSeek-V3-shaped run.

Writes benchmarks/results/offload.md. Rerun:

    python benchmarks/big_stores.py deepseek     # once: the 1M-token, 58-layer, top-8-of-256 store
    python benchmarks/bench_offload.py           # then this

The run is `benchmarks/out/scale_deepseek.duckdb` (run `deepseek-1m`: 2,048 sequences of 512
tokens, 58 MoE layers, top-8 of 256 experts, written by `benchmarks/synthetic.py`'s seeded
generator, with load skew and locality). Without that store, `--generate` builds the same routing
in memory slice by slice (slow: the generator, not the simulator, dominates).

Measured, each over every token-layer step of the run (tokens x 58):
- the simulator kernel alone (`simulate_stream`) for several policy / predictor configurations
  at C = 32 experts per layer, m = 8, lead 1; chunks are read once and every configuration is
  run on each chunk, so reading is timed apart;
- end to end: `offload_whatif` over `store.source(run)` (reading, predictions and three
  configurations), as `routescope simulate offload` runs it.
Throughput = token-layer steps / second, on the wall clock and per CPU second of this process
(all its threads): the machine is shared, so CPU seconds are the steadier number.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spin-waiting on a shared machine

import numba  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from routescope.analysis import offload as ol  # noqa: E402
from routescope.analysis import prefetch as pf  # noqa: E402
from routescope.core.source import InMemorySource  # noqa: E402
from routescope.core.trace import Trace  # noqa: E402

STORE = ROOT / "benchmarks" / "out" / "scale_deepseek.duckdb"
RUN = "deepseek-1m"
CAPACITY, WIDTH = 32, 8
#: DeepSeek-V3's dimensions (config.json of deepseek-ai/DeepSeek-V3), experts in FP8 as served
DEEPSEEK_V3 = {
    "hidden_size": 7168,
    "moe_intermediate_size": 2048,
    "intermediate_size": 18432,
    "n_shared_experts": 1,
    "num_hidden_layers": 61,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "head_dim": 128,
    "vocab_size": 129280,
    "tie_word_embeddings": False,
}
#: (label, policy, predictor or None, width)
CONFIGS = [
    ("LRU, cache only", "lru", None, 0),
    ("LRU + previous-token", "lru", "previous-token", WIDTH),
    ("LRU + oracle", "lru", "oracle", WIDTH),
    ("LFU, cache only", "lfu", None, 0),
    ("Belady, cache only", "belady", None, 0),
    ("Belady + oracle", "belady", "oracle", WIDTH),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def store_chunks(max_rows: int) -> Iterator[Trace]:
    from routescope.store.store import RoutingStore

    with RoutingStore(str(STORE), read_only=True) as store:
        yield from store.source(RUN).chunks(max_rows=max_rows)


def generated_chunks(tokens: int, seqs_per_chunk: int) -> Iterator[Trace]:
    from benchmarks.synthetic import LABELS, Generator

    gen = Generator(58, 256, 8, LABELS, 0)
    n_seqs = tokens // 512
    for start in range(0, n_seqs, seqs_per_chunk):
        ids = np.arange(start, min(start + seqs_per_chunk, n_seqs), dtype=np.int64)
        parts = [gen.sequences(ids[i : i + 8], 512) for i in range(0, len(ids), 8)]
        experts = np.concatenate([p.experts for p in parts])
        yield Trace(
            experts=experts,
            weights=None,
            seq_offsets=np.arange(0, len(experts) + 1, 512, dtype=np.int64),
            num_experts=256,
            top_k=8,
            layers=tuple(range(58)),
            seq_ids=ids,
        )


def cost() -> ol.OffloadCost:
    return ol.model_cost(DEEPSEEK_V3, 58, 8, 256, bytes_per_param=1, tflops=1.0)


def kernel_pass(chunks: Iterator[Trace], c: ol.OffloadCost) -> tuple[dict, dict]:
    """Every configuration on every chunk; returns per-config timings and stats, and the
    read / prediction timings."""
    specs = {
        name: pf.PredictorSpec(name, pf.get_predictor(name)[0], 0, None)
        for name in {p for _, _, p, _ in CONFIGS if p}
    }
    timing = {label: [0.0, 0.0] for label, *_ in CONFIGS}
    stats: dict[str, dict] = {label: {} for label, *_ in CONFIGS}
    other = {"read": [0.0, 0.0], "predict": [0.0, 0.0], "tokens": 0, "layers": 0}
    it = iter(chunks)
    while True:
        w, p = time.perf_counter(), time.process_time()
        chunk = next(it, None)
        other["read"][0] += time.perf_counter() - w
        other["read"][1] += time.process_time() - p
        if chunk is None:
            break
        other["tokens"] += chunk.num_tokens
        other["layers"] = chunk.num_layers
        X = np.ascontiguousarray(chunk.experts, dtype=np.int32)
        w, p = time.perf_counter(), time.process_time()
        preds = {name: pf.predict(chunk, s, WIDTH) for name, s in specs.items()}
        other["predict"][0] += time.perf_counter() - w
        other["predict"][1] += time.process_time() - p
        for label, policy, pred, m in CONFIGS:
            w, p = time.perf_counter(), time.process_time()
            got = ol.simulate_stream(
                X,
                chunk.seq_offsets,
                256,
                policy,
                CAPACITY,
                c,
                predictions=None if pred is None else preds[pred],
                width=m,
                lead=1,
            )
            timing[label][0] += time.perf_counter() - w
            timing[label][1] += time.process_time() - p
            for key, val in got.items():
                stats[label][key] = stats[label].get(key, 0) + val
        print(f"\r{other['tokens']:,} tokens simulated", end="", flush=True)
    print()
    return {"timing": timing, "stats": stats}, other


def warm_up(c: ol.OffloadCost) -> None:
    """Compile every kernel once on a small trace (numba caches them on disk afterwards)."""
    rng = np.random.default_rng(0)
    X = np.stack([[rng.permutation(256)[:8] for _ in range(58)] for _ in range(64)])
    tr = Trace(
        experts=X.astype(np.int16),
        weights=None,
        seq_offsets=np.array([0, 32, 64]),
        num_experts=256,
        top_k=8,
        layers=tuple(range(58)),
    )
    ol.offload_whatif(tr, c, policies=["lru", "lfu", "belady"], predictors=["previous-token", "oracle"], capacities=[CAPACITY], phase="all")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generate", action="store_true", help="build the run in memory instead")
    ap.add_argument("--tokens", type=int, default=1 << 20, help="with --generate")
    ap.add_argument("--max-rows", type=int, default=4_000_000, help="route rows per chunk")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "offload.md"))
    args = ap.parse_args()
    use_store = not args.generate and STORE.exists()
    if not use_store and not args.generate:
        sys.exit(f"no {STORE}: run `python benchmarks/big_stores.py deepseek`, or pass --generate")
    c = cost()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    warm_up(c)
    compile_s = time.perf_counter() - t0
    chunks = (
        store_chunks(args.max_rows)
        if use_store
        else generated_chunks(args.tokens, max(1, args.max_rows // (512 * 58)))
    )
    kern, other = kernel_pass(chunks, c)
    steps = other["tokens"] * other["layers"]
    e2e = None
    e2e_tokens = 0
    if use_store:
        from routescope.store.store import RoutingStore

        with RoutingStore(str(STORE), read_only=True) as store:
            w, p = time.perf_counter(), time.process_time()
            df = ol.offload_whatif(
                store.source(RUN),
                c,
                policies=["lru"],
                predictors=["previous-token", "oracle"],
                capacities=[CAPACITY],
                phase="all",
                max_rows=args.max_rows,
            )
            e2e = (time.perf_counter() - w, time.process_time() - p, df)
    else:  # the same in memory on the first chunks (no store to stream from); generation untimed
        wall = cpu = 0.0
        e2e_tokens = 0
        for chunk in generated_chunks(min(args.tokens, 1 << 17), 32):
            w, p = time.perf_counter(), time.process_time()
            df = ol.offload_whatif(
                InMemorySource(chunk),
                c,
                policies=["lru"],
                predictors=["previous-token", "oracle"],
                capacities=[CAPACITY],
                phase="all",
            )
            wall += time.perf_counter() - w
            cpu += time.process_time() - p
            e2e_tokens += chunk.num_tokens
        e2e = (wall, cpu, df)
    load1 = os.getloadavg()
    lines = [
        "# Offloading what-if: simulator throughput",
        "",
        f"Run: {'`' + RUN + '` in `benchmarks/out/scale_deepseek.duckdb`' if use_store else 'generated in memory'}"
        f" — {other['tokens']:,} tokens, {other['layers']} MoE layers, top-8 of 256 experts "
        f"(DeepSeek-V3's routed shape; synthetic routing with load skew and locality, "
        f"`benchmarks/synthetic.py`): **{steps:,} token-layer steps** per configuration. Cache "
        f"C = {CAPACITY} experts per layer, prefetch width m = {WIDTH}, lead 1, cold start, one "
        "stream per sequence (phase all).",
        "",
        f"Costs (they change the simulated tokens/s, not the simulator's speed): {c.note}; "
        f"expert load {c.load_ps / 1e9:.3f} ms.",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs (shared with other jobs while measured; "
        f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end), "
        f"numba {numba.__version__} with {numba.config.NUMBA_NUM_THREADS} threads, "
        f"Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        "## Simulator kernel (`simulate_stream`), chunks already in memory",
        "",
        "| configuration | wall s | CPU s | M steps / wall s | M steps / CPU s | hit rate | "
        "simulated tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, *_ in CONFIGS:
        wall, cpu = kern["timing"][label]
        st = kern["stats"][label]
        lines.append(
            f"| {label} | {wall:.1f} | {cpu:.1f} | {steps / wall / 1e6:.2f} | "
            f"{steps / cpu / 1e6:.2f} | {st['hits'] / st['requests']:.3f} | "
            f"{st['tokens'] / (st['time_ps'] / 1e12):.1f} |"
        )
    total_w = sum(v[0] for v in kern["timing"].values())
    total_c = sum(v[1] for v in kern["timing"].values())
    lines += [
        "",
        f"All {len(CONFIGS)} configurations: {len(CONFIGS) * steps / total_w / 1e6:.2f} M steps "
        f"per wall second, {len(CONFIGS) * steps / total_c / 1e6:.2f} M per CPU second. "
        f"{'Reading' if use_store else 'Generating'} the run chunk by chunk took "
        f"{other['read'][0]:.1f} s wall "
        f"({other['read'][1]:.1f} s CPU); predictions (previous-token, oracle) "
        f"{other['predict'][0]:.1f} s wall ({other['predict'][1]:.1f} s CPU); compiling the "
        f"kernels {compile_s:.1f} s (once; cached on disk afterwards).",
        "",
    ]
    if e2e is not None:
        wall, cpu, df = e2e
        n_cfg = df.filter(df["kind"] == "simulated").height
        e2e_steps = steps if use_store else e2e_tokens * other["layers"]
        where = "`store.source(run)`" if use_store else f"{e2e_tokens:,} tokens in memory"
        lines += [
            f"## End to end (`offload_whatif` over {where})",
            "",
            f"LRU cache-only, + previous-token, + oracle at C = {CAPACITY} ({n_cfg} "
            f"configurations; reading, predictions and simulation): {wall:.1f} s wall, "
            f"{cpu:.1f} s CPU = **{n_cfg * e2e_steps / wall / 1e6:.2f} M token-layer steps per "
            f"wall second** ({n_cfg * e2e_steps / cpu / 1e6:.2f} M per CPU second), peak memory one "
            f"chunk of at most {args.max_rows:,} route rows.",
            "",
        ]
    lines += [
        "Rerun: `python benchmarks/big_stores.py deepseek` (once) then "
        "`python benchmarks/bench_offload.py` (or `--generate` without the store).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
