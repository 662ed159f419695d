"""Analyses past one machine: `RayExecutor` runs a reduction's units as Ray tasks that reopen the
source where they run, and the merged result equals the one-process result exactly."""

from __future__ import annotations

import numpy as np

from routescope.analysis.streaming import Reduction, add_arrays, reduce_source, run_reduction
from routescope.core.trace import Trace


def _counts(num_layers: int, num_experts: int) -> Reduction:
    """Per (layer, expert) assignment counts and per-sequence token counts: a tiny reduction."""

    def kernel(chunk: Trace) -> dict[str, np.ndarray]:
        counts = np.zeros((num_layers, num_experts), np.int64)
        for col in range(chunk.num_layers):
            counts[col] += np.bincount(chunk.experts[:, col].ravel(), minlength=num_experts)
        return {"counts": counts, "tokens": np.array([chunk.num_tokens])}

    return Reduction(
        kernel=kernel,
        merge=add_arrays,
        finalize=lambda p: p,
        empty=lambda: {
            "counts": np.zeros((num_layers, num_experts), np.int64),
            "tokens": np.zeros(1, np.int64),
        },
        name="counts",
    )


def _write(path: str) -> None:
    """A run of 9 sequences of mixed lengths over 3 MoE layers, 8 experts, top-2."""
    from routescope.core.records import BatchRouting
    from routescope.store.store import RoutingStore

    rng = np.random.default_rng(5)
    layers, e, k = [0, 2, 3], 8, 2
    with RoutingStore(path) as store:
        store.create_or_resume_run(
            "run-a",
            name="run-a",
            model_id="m",
            family="olmoe",
            num_layers=4,
            moe_layers=layers,
            num_experts=e,
            top_k=k,
        )
        for ids in ([4, 0, 7], [1, 2, 3, 5, 6, 8]):
            lengths = [2 + (i * 3) % 5 for i in ids]
            n = sum(lengths)
            ex = np.argsort(rng.random((n, len(layers), e)), axis=2)[:, :, :k].astype(np.int16)
            batch = BatchRouting(
                seq_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                token_ids=rng.integers(0, 50, n),
                positions=np.concatenate([np.arange(m, dtype=np.int32) for m in lengths]),
                phase=np.zeros(n, np.uint8),
                experts=ex,
                weights=rng.random((n, len(layers), k)).astype(np.float32),
            )
            store.write_batch("run-a", [{"seq_id": i} for i in ids], batch)
        store.finish_run("run-a")


def test_ray_executor_equals_one_process(tmp_path):
    import ray  # the [ray] extra, part of [dev]

    from routescope.analysis.ray_driver import RayExecutor
    from routescope.store.parquet import export_parquet
    from routescope.store.store import RoutingStore

    db = str(tmp_path / "s.duckdb")
    _write(db)
    with RoutingStore(db, read_only=True) as store:
        export_parquet(store, "run-a", tmp_path / "pq")
        src = store.source("run-a")
        red = _counts(len(src.info.layers), src.info.num_experts)
        want = reduce_source(src, red, max_rows=10)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            executor = RayExecutor(units_per_cpu=3)
            got_file = run_reduction(src, red, max_rows=10, executor=executor)
            pq = RoutingStore(str(tmp_path / "pq"), read_only=True)
            got_pq = run_reduction(pq.source("run-a"), red, max_rows=7, executor=executor)
            pq.close()
        finally:
            ray.shutdown()
    assert want["counts"].sum() == src.info.num_tokens * len(src.info.layers) * src.info.top_k
    for got in (got_file, got_pq):
        assert np.array_equal(got["counts"], want["counts"])
        assert int(got["tokens"][0]) == src.info.num_tokens
