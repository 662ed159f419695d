"""The large synthetic stores the scale benchmark reads, built once and cached under benchmarks/out/.

Each store holds one run written with `benchmarks/synthetic.py`'s seeded `Generator` (the same
routing `write_synthetic_run` writes, whatever the batching) through `RoutingStore.write_batch`,
then clustered by `finish_run`, as a finished collection is. The build is split so each part can
be timed: generating the routing (numpy; not the store's cost), writing it (the ingest rate),
CHECKPOINT (DuckDB compresses there), `finish_run` (clustering by layer) and its CHECKPOINT. The
file's bytes per route row are read before and after clustering; for the 58-layer run a copy of
the unclustered file is kept, so reading can be compared on both layouts.

    python benchmarks/big_stores.py deepseek        # 1M tokens, 58 layers, top-8 of 256
    python benchmarks/big_stores.py olmoe           # 10M tokens, 16 layers, top-8 of 64

Build statistics go to benchmarks/out/scale_<name>.build.json beside the store.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.synthetic import LABELS, VOCAB, Generator  # noqa: E402
from routescope.core.records import BatchRouting  # noqa: E402
from routescope.store.store import RoutingStore  # noqa: E402

OUT = ROOT / "benchmarks" / "out"
#: Route rows generated at once (bounds the generator's [seqs, T, L, E] float scores).
GEN_ROWS = 1 << 18
#: Route rows per write transaction (whole sequences; the collection runner's group is >= 2^18).
WRITE_ROWS = 1 << 20


@dataclass(frozen=True)
class Shape:
    """One synthetic run's shape."""

    run_id: str
    tokens: int
    seq_len: int
    layers: int
    experts: int
    top_k: int
    seed: int = 0
    keep_unclustered: bool = False

    @property
    def sequences(self) -> int:
        return self.tokens // self.seq_len

    @property
    def route_rows(self) -> int:
        return self.sequences * self.seq_len * self.layers


SHAPES: dict[str, Shape] = {
    # issue 12: DeepSeek-V3's routed shape, moe-lrc's standard 2,048 x 512 tokens
    "deepseek": Shape("deepseek-1m", 1 << 20, 512, 58, 256, 8, keep_unclustered=True),
    # issue 12: a 10M-token OLMoE-shaped run
    "olmoe": Shape("olmoe-10m", 10 << 20, 512, 16, 64, 8),
    # the in-memory comparison: small enough to load whole
    "deepseek-small": Shape("deepseek-128k", 1 << 17, 512, 58, 256, 8),
    # a smoke test of the benchmark itself
    "tiny": Shape("tiny", 1 << 13, 128, 4, 16, 4, keep_unclustered=True),
}


def store_path(name: str) -> Path:
    return OUT / f"scale_{name}.duckdb"


def unclustered_path(name: str) -> Path:
    return OUT / f"scale_{name}.unclustered.duckdb"


def stats_path(name: str) -> Path:
    return OUT / f"scale_{name}.build.json"


def file_bytes(path: Path) -> int:
    """The DuckDB file's size (its WAL included, if any)."""
    wal = Path(str(path) + ".wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _concat(parts: list[BatchRouting]) -> BatchRouting:
    """Batches of whole sequences as one batch."""
    if len(parts) == 1:
        return parts[0]
    offsets = [np.zeros(1, dtype=np.int64)]
    base = 0
    for p in parts:
        offsets.append(np.asarray(p.seq_offsets[1:], dtype=np.int64) + base)
        base += p.num_tokens
    cat = lambda attr: np.concatenate([getattr(p, attr) for p in parts])  # noqa: E731
    return BatchRouting(
        seq_offsets=np.concatenate(offsets),
        token_ids=cat("token_ids"),
        positions=cat("positions"),
        phase=cat("phase"),
        experts=cat("experts"),
        weights=cat("weights"),
    )


def _cpu() -> float:
    return time.process_time()


def build(name: str, *, memory_limit: str | None = None, progress: bool = True) -> dict:
    """Write the store `name` from scratch and return (and save) its build statistics."""
    shape = SHAPES[name]
    OUT.mkdir(parents=True, exist_ok=True)
    path = store_path(name)
    for p in (path, Path(str(path) + ".wal"), unclustered_path(name)):
        p.unlink(missing_ok=True)
    gen = Generator(shape.layers, shape.experts, shape.top_k, LABELS, shape.seed)
    per_gen = max(1, GEN_ROWS // (shape.seq_len * shape.layers))
    per_write = max(per_gen, WRITE_ROWS // (shape.seq_len * shape.layers) // per_gen * per_gen)
    texts = {i: f"t{i}" for i in range(VOCAB)}
    labels = list(LABELS)
    t_gen = c_gen = t_write = c_write = 0.0
    n_seqs = shape.sequences
    with RoutingStore(path) as store:
        if memory_limit:
            store.con.execute(f"SET memory_limit = '{memory_limit}'")
        store.con.execute(f"SET temp_directory = '{OUT / 'duckdb_tmp'}'")
        store.create_or_resume_run(
            shape.run_id,
            name=shape.run_id,
            model_id=f"synthetic/{shape.layers}x{shape.experts}k{shape.top_k}",
            family="synthetic",
            num_layers=shape.layers,
            moe_layers=list(range(shape.layers)),
            num_experts=shape.experts,
            top_k=shape.top_k,
            config={"synthetic": True, "seed": shape.seed, "seq_len": shape.seq_len,
                    "batch_size": per_write},
        )  # fmt: skip
        for start in range(0, n_seqs, per_write):
            stop = min(start + per_write, n_seqs)
            w0, c0 = time.perf_counter(), _cpu()
            parts = [
                gen.sequences(np.arange(a, min(a + per_gen, stop), dtype=np.int64), shape.seq_len)
                for a in range(start, stop, per_gen)
            ]
            batch = _concat(parts)
            del parts
            meta = [
                {"seq_id": i, "prompt_set": "synthetic", "prompt_id": f"p{i}",
                 "label": labels[i % len(labels)], "text": f"synthetic sequence {i}"}
                for i in range(start, stop)
            ]  # fmt: skip
            w1, c1 = time.perf_counter(), _cpu()
            store.write_batch(shape.run_id, meta, batch, texts)
            w2, c2 = time.perf_counter(), _cpu()
            t_gen += w1 - w0
            c_gen += c1 - c0
            t_write += w2 - w1
            c_write += c2 - c1
            del batch
            if progress:
                print(
                    f"\r{name}: {stop}/{n_seqs} sequences, generate {t_gen:.0f} s, "
                    f"write {t_write:.0f} s",
                    end="",
                    flush=True,
                )
        if progress:
            print(flush=True)
        w0, c0 = time.perf_counter(), _cpu()
        store.con.execute("CHECKPOINT")
        t_ckpt, c_ckpt = time.perf_counter() - w0, _cpu() - c0
    bytes_unclustered = file_bytes(path)
    if shape.keep_unclustered:
        shutil.copyfile(path, unclustered_path(name))
    with RoutingStore(path) as store:
        if memory_limit:
            store.con.execute(f"SET memory_limit = '{memory_limit}'")
        store.con.execute(f"SET temp_directory = '{OUT / 'duckdb_tmp'}'")
        w0, c0 = time.perf_counter(), _cpu()
        store.finish_run(shape.run_id)
        t_cluster, c_cluster = time.perf_counter() - w0, _cpu() - c0
        w0, c0 = time.perf_counter(), _cpu()
        store.set_status(shape.run_id, "complete")
        store.con.execute("CHECKPOINT")
        t_ckpt2, c_ckpt2 = time.perf_counter() - w0, _cpu() - c0
    bytes_clustered = file_bytes(path)
    rows = shape.route_rows
    stats = {
        "name": name,
        "shape": asdict(shape),
        "route_rows": rows,
        "sequences_per_write": per_write,
        "route_rows_per_write": per_write * shape.seq_len * shape.layers,
        "memory_limit": memory_limit or "duckdb default (80% of RAM)",
        "generate_wall_s": t_gen,
        "generate_cpu_s": c_gen,
        "write_wall_s": t_write,
        "write_cpu_s": c_write,
        "checkpoint_wall_s": t_ckpt,
        "checkpoint_cpu_s": c_ckpt,
        "ingest_rows_per_wall_s": rows / (t_write + t_ckpt),
        "ingest_rows_per_cpu_s": rows / (c_write + c_ckpt),
        "bytes_unclustered": bytes_unclustered,
        "bytes_per_row_unclustered": bytes_unclustered / rows,
        "cluster_wall_s": t_cluster,
        "cluster_cpu_s": c_cluster,
        "cluster_checkpoint_wall_s": t_ckpt2,
        "cluster_checkpoint_cpu_s": c_ckpt2,
        "cluster_rows_per_wall_s": rows / (t_cluster + t_ckpt2),
        "bytes_clustered": bytes_clustered,
        "bytes_per_row_clustered": bytes_clustered / rows,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "load_average_end": list(os.getloadavg()),
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    stats_path(name).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def built(name: str) -> bool:
    """The store and its build statistics exist (and the unclustered copy, when kept)."""
    ok = store_path(name).exists() and stats_path(name).exists()
    return ok and (not SHAPES[name].keep_unclustered or unclustered_path(name).exists())


def ensure(name: str, **kw) -> Path:
    """The store's path, building it first when it is missing."""
    if not built(name):
        build(name, **kw)
    return store_path(name)


def load_stats(name: str) -> dict:
    return json.loads(stats_path(name).read_text(encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+", choices=sorted(SHAPES))
    ap.add_argument("--force", action="store_true", help="Rebuild even when cached.")
    ap.add_argument(
        "--memory-limit",
        default=None,
        help="DuckDB memory_limit while writing and clustering (default: DuckDB's own).",
    )
    args = ap.parse_args()
    for name in args.names:
        if built(name) and not args.force:
            print(f"{name}: cached at {store_path(name)}")
            continue
        stats = build(name, memory_limit=args.memory_limit)
        print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
