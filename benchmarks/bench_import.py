"""Import rate: route rows/s for `routescope import vllm` of a 1M-token vLLM-layout trace of an
OLMoE-shaped model (16 MoE layers, top-8 of 64 experts). Writes benchmarks/results/import.md.

The trace is generated before timing: requests of 448 prompt + 64 generated tokens, each an
offline-API `.npz` (prompt/output token ids, int16 routing for tokens − 1 positions, as vLLM
returns it). Timed: the reader alone (parsing every file once), and the whole import (the survey
pass that checks every value, the write pass through the store's writer in ~1M-route-row
transactions, and `finish_run`'s clustering), beside a plain `write_batch` of the same rows from
memory (the store's own ingest rate, the ceiling of an import).

Rerun:  python benchmarks/bench_import.py [--tokens 1048576] [--out PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

LAYERS, K, E = 16, 8, 64
PROMPT, GEN = 448, 64


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def write_trace(root: Path, n_tokens: int, seed: int = 0) -> tuple[int, int]:
    """Requests of PROMPT + GEN tokens until n_tokens; returns (requests, routed tokens)."""
    rng = np.random.default_rng(seed)
    per = PROMPT + GEN
    n_req = max(1, n_tokens // per)
    for r in range(n_req):
        routes = np.argsort(rng.random((per - 1, LAYERS, E), dtype=np.float32), axis=2)[:, :, :K]
        np.savez(
            root / f"req_{r:05d}.npz",
            prompt_token_ids=rng.integers(0, 50_000, PROMPT),
            output_token_ids=rng.integers(0, 50_000, GEN),
            prompt_routed_experts=routes[:PROMPT].astype(np.int16),
            routed_experts=routes[PROMPT:].astype(np.int16),
        )
    return n_req, n_req * (per - 1)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{model}, {os.cpu_count()} CPUs{mem}, load average {os.getloadavg()[0]:.1f} at start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1 << 20)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "import.md"))
    args = ap.parse_args()

    import duckdb

    from routescope.importers import import_trace
    from routescope.importers.base import ReadOptions
    from routescope.importers.vllm import read
    from routescope.store.store import RoutingStore

    load = machine()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trace = root / "trace"
        trace.mkdir()
        t0 = time.perf_counter()
        n_req, n_tok = write_trace(trace, args.tokens)
        gen_s = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in trace.iterdir())
        rows = n_tok * LAYERS

        w0, c0 = time.perf_counter(), cpu()
        for _ in read([trace], ReadOptions()):
            pass
        read_w, read_c = time.perf_counter() - w0, cpu() - c0

        db = str(root / "imp.duckdb")
        w0, c0 = time.perf_counter(), cpu()
        res = import_trace("vllm", [trace], db=db, name="bench", num_experts=E)
        imp_w, imp_c = time.perf_counter() - w0, cpu() - c0
        assert res.route_rows == rows, (res.route_rows, rows)
        db_mib = Path(db).stat().st_size / 2**20

        # the store's own ingest of the same rows, from memory, same transaction size
        from routescope.importers.driver import FLUSH_ROWS, _batch, _Plan

        seqs = list(read([trace], ReadOptions()))
        plan = _Plan(list(range(LAYERS)), list(range(LAYERS)), K, LAYERS, E, False)
        per_txn = max(1, FLUSH_ROWS // ((PROMPT + GEN - 1) * LAYERS) + 1)
        batches = [_batch(seqs[i : i + per_txn], plan, False) for i in range(0, len(seqs), per_txn)]
        db2 = str(root / "ingest.duckdb")
        w0, c0 = time.perf_counter(), cpu()
        with RoutingStore(db2) as store:
            store.create_or_resume_run(
                "b",
                name="b",
                model_id="synthetic",
                family=None,
                num_layers=LAYERS,
                moe_layers=list(range(LAYERS)),
                num_experts=E,
                top_k=K,
                has_weights=False,
            )
            sid = 0
            for batch, _ids in batches:
                metas = [{"seq_id": sid + j} for j in range(batch.num_sequences)]
                sid += batch.num_sequences
                store.write_batch("b", metas, batch)
            store.finish_run("b")
            store.con.execute("CHECKPOINT")
        ing_w, ing_c = time.perf_counter() - w0, cpu() - c0

    rows_f = f"{rows:,}"
    lines = [
        "# Import",
        "",
        f"`routescope import vllm` of a synthetic vLLM-layout trace of an OLMoE-shaped model "
        f"({LAYERS} MoE layers, top-{K} of {E} experts, no gate weights): {n_req:,} requests of "
        f"{PROMPT} prompt + {GEN} generated tokens as offline-API `.npz` files "
        f"({disk / 2**20:.0f} MiB; generated in {gen_s:.0f} s, not timed), routing for tokens − 1 "
        f"positions each: {n_tok:,} routed tokens = {rows_f} route rows.",
        "",
        "| operation | wall s | CPU s | route rows / wall s | route rows / CPU s |",
        "|---|---:|---:|---:|---:|",
        f"| reader alone (parse every `.npz` once) | {read_w:.2f} | {read_c:.2f} | "
        f"{rows / read_w:,.0f} | {rows / max(read_c, 1e-9):,.0f} |",
        f"| **whole import** (survey pass + write pass + clustering) | {imp_w:.2f} | {imp_c:.2f} | "
        f"**{rows / imp_w:,.0f}** | {rows / max(imp_c, 1e-9):,.0f} |",
        f"| `write_batch` of the same rows from memory + clustering (the store's ceiling) | "
        f"{ing_w:.2f} | {ing_c:.2f} | {rows / ing_w:,.0f} | {rows / max(ing_c, 1e-9):,.0f} |",
        "",
        f"The import runs at {ing_w / imp_w:.2f}x the store's own ingest rate of the same rows; "
        f"the rest is reading the files twice (the survey pass checks every value before anything "
        f"is written, then the write pass reads them again). Database {db_mib:.0f} MiB.",
        "",
        f"Machine: {load}; Python {platform.python_version()}, duckdb {duckdb.__version__}, "
        f"numpy {np.__version__}.",
        "",
        "Rerun: `python benchmarks/bench_import.py` (options: --tokens, --out).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
