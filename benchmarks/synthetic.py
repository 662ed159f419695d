"""Synthetic routing runs of any size and shape, written fast through `RoutingStore.write_batch`.

For benchmarks (and anyone who needs a large store without a model). The routing has the
structure analyses look for, so their numbers are not those of uniform noise:
- load imbalance: each layer has its own expert popularity (a few experts busy, a few rare);
- domain specialization: each label shifts the popularity (so Experts and Localization find
  something);
- token identity: a token id pulls towards its own experts at each layer (vocabulary
  specialization), through a hashed table;
- locality: a per-(sequence, layer) AR(1) drift, so consecutive tokens share most of their
  experts and the share decays with distance (SRP/SCH above the shuffled baseline, caches hit).

Scores per (token, layer, expert) = popularity + label shift + token pull + drift; the top-k
experts by score are routed in rank order, their weights a softmax of those k scores. Everything
is seeded: the same arguments write the same run.

    from benchmarks.synthetic import write_synthetic_run
    write_synthetic_run("big.duckdb", "olmoe-1m", tokens=1_048_576, seq_len=512, layers=16,
                        experts=64, top_k=8, seed=0)

or `python benchmarks/synthetic.py big.duckdb --tokens 1048576`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from routescope.core.records import BatchRouting
from routescope.store.store import RoutingStore

#: Default labels, one per sequence in turn.
LABELS = ("code", "prose", "math", "chat")
#: Token ids are drawn from this vocabulary (Zipf-like), with texts "t<id>".
VOCAB = 50_000
#: Rows of the hashed token → expert-pull table.
TOKEN_TABLE = 4096
#: Route rows per transaction (the collection runner's group size is of this order).
ROWS_PER_WRITE = 1 << 19


class Generator:
    """The fixed parts of a synthetic model's routing (popularity, label shifts, token pulls)."""

    def __init__(
        self,
        layers: int,
        experts: int,
        top_k: int,
        labels: Sequence[str],
        seed: int,
        *,
        drift: float = 0.9,
        drift_scale: float = 1.2,
        popularity_scale: float = 0.4,
        token_scale: float = 1.0,
        label_scale: float = 0.8,
    ) -> None:
        if not 1 <= top_k <= experts:
            raise ValueError(f"top_k {top_k} must be between 1 and experts {experts}")
        self.layers, self.experts, self.top_k = layers, experts, top_k
        self.labels = list(labels)
        self.seed = seed
        self.drift = drift
        self.drift_scale = drift_scale
        rng = np.random.default_rng([seed, 0])
        # per layer: a skewed popularity (a log-normal spread of expert affinities)
        self.popularity = (rng.standard_normal((layers, experts)) * popularity_scale).astype(
            np.float32
        )
        self.label_shift = (
            rng.standard_normal((max(len(self.labels), 1), layers, experts)) * label_scale
        ).astype(np.float32)
        self.token_pull = (
            rng.standard_normal((TOKEN_TABLE, layers, experts)) * token_scale
        ).astype(np.float32)
        # Zipf-like token frequencies over the vocabulary
        ranks = np.arange(1, VOCAB + 1, dtype=np.float64)
        p = ranks**-1.1
        self.token_cdf = np.cumsum(p / p.sum())

    def sequences(self, seq_ids: np.ndarray, seq_len: int) -> BatchRouting:
        """The routing of sequences `seq_ids` (each seq_len tokens, prefill), seeded per sequence
        so any batching gives the same run."""
        b, n_lay, e, k = len(seq_ids), self.layers, self.experts, self.top_k
        n = b * seq_len
        token_ids = np.empty(n, dtype=np.int64)
        noise = np.empty((b, seq_len, n_lay, e), dtype=np.float32)
        for i, sid in enumerate(seq_ids.tolist()):
            rng = np.random.default_rng([self.seed, 1, int(sid)])
            u = rng.random(seq_len)
            token_ids[i * seq_len : (i + 1) * seq_len] = np.searchsorted(self.token_cdf, u)
            noise[i] = rng.standard_normal((seq_len, n_lay, e), dtype=np.float32)
        # AR(1) drift along each sequence: consecutive tokens see nearly the same drift
        a = np.float32(self.drift)
        c = np.float32(np.sqrt(1 - self.drift**2))
        for t in range(1, seq_len):
            noise[:, t] = a * noise[:, t - 1] + c * noise[:, t]
        scores = noise.reshape(n, n_lay, e)
        scores *= np.float32(self.drift_scale)
        scores += self.popularity[None]
        scores += self.token_pull[token_ids % TOKEN_TABLE]
        if self.labels:
            label_idx = np.repeat(seq_ids % len(self.labels), seq_len)
            scores += self.label_shift[label_idx]
        top = np.argpartition(scores, e - k, axis=2)[:, :, e - k :]
        top_scores = np.take_along_axis(scores, top, axis=2)
        order = np.argsort(-top_scores, axis=2)  # rank order, highest first
        experts = np.take_along_axis(top, order, axis=2).astype(np.int16)
        top_scores = np.take_along_axis(top_scores, order, axis=2)
        w = np.exp(top_scores - top_scores[:, :, :1])
        weights = (w / w.sum(axis=2, keepdims=True)).astype(np.float32)
        return BatchRouting(
            seq_offsets=np.arange(0, n + 1, seq_len, dtype=np.int64),
            token_ids=token_ids,
            positions=np.tile(np.arange(seq_len, dtype=np.int32), b),
            phase=np.zeros(n, dtype=np.uint8),
            experts=experts,
            weights=weights,
        )


def write_synthetic_run(
    db: str | Path,
    run_id: str,
    tokens: int,
    seq_len: int,
    layers: int,
    experts: int,
    top_k: int,
    seed: int = 0,
    labels: Sequence[str] | None = LABELS,
    *,
    model_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Write a complete synthetic run of `tokens` tokens (tokens // seq_len sequences of seq_len
    tokens; labels in turn, none when labels is empty/None) into the store at `db` and cluster it
    like a finished collection. Returns {'sequences', 'route_rows', 'seconds'}."""
    if seq_len < 1 or tokens < seq_len:
        raise ValueError(f"need at least one sequence: tokens {tokens}, seq_len {seq_len}")
    t0 = time.perf_counter()
    labels = list(labels or [])
    gen = Generator(layers, experts, top_k, labels, seed)
    n_seqs = tokens // seq_len
    per_write = max(1, ROWS_PER_WRITE // (seq_len * layers))
    texts = {i: f"t{i}" for i in range(VOCAB)}
    with RoutingStore(db) as store:
        store.create_or_resume_run(
            run_id,
            name=run_id,
            model_id=model_id or f"synthetic/{layers}x{experts}k{top_k}",
            family="synthetic",
            num_layers=layers,
            moe_layers=list(range(layers)),
            num_experts=experts,
            top_k=top_k,
            config={"synthetic": True, "seed": seed, "seq_len": seq_len, "batch_size": per_write},
        )
        for start in range(0, n_seqs, per_write):
            ids = np.arange(start, min(start + per_write, n_seqs), dtype=np.int64)
            batch = gen.sequences(ids, seq_len)
            meta = [
                {
                    "seq_id": int(i),
                    "prompt_set": "synthetic",
                    "prompt_id": f"p{i}",
                    "label": labels[int(i) % len(labels)] if labels else None,
                    "text": f"synthetic sequence {i}",
                }
                for i in ids
            ]
            store.write_batch(run_id, meta, batch, texts)
            if progress is not None:
                progress(int(ids[-1]) + 1, n_seqs)
        store.finish_run(run_id)
        store.set_status(run_id, "complete")
        store.con.execute("CHECKPOINT")
    return {
        "sequences": float(n_seqs),
        "route_rows": float(n_seqs * seq_len * layers),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db")
    ap.add_argument("--run-id", default="synthetic")
    ap.add_argument("--tokens", type=int, default=1_048_576)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = write_synthetic_run(
        args.db,
        args.run_id,
        args.tokens,
        args.seq_len,
        args.layers,
        args.experts,
        args.top_k,
        args.seed,
        progress=lambda d, t: print(f"\r{d}/{t} sequences", end="", flush=True),
    )
    print(f"\nwrote {int(out['route_rows']):,} route rows in {out['seconds']:.1f} s to {args.db}")


if __name__ == "__main__":
    main()
