"""Reading a run chunk by chunk: `StoreSource` and `InMemorySource` equal the whole-run Trace,
whatever the chunk size, filters or physical layout; sources pickle as where to reopen them."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_store import LAYERS, batch_of, make_seq, new_run

from routescope.core.errors import InvalidParameterError, StoreError
from routescope.core.source import InMemorySource, plan_chunks
from routescope.core.trace import Trace
from routescope.store.parquet import export_parquet
from routescope.store.source import open_source
from routescope.store.store import RoutingStore

LABELS = ["code", "prose", None]
N_SEQ = 12


def _seqs() -> dict[int, dict]:
    """12 sequences of mixed lengths, some with decode tokens."""
    rng = np.random.default_rng(11)
    return {i: make_seq(rng, 2 + (i * 5) % 7, (i % 3) * 2) for i in range(N_SEQ)}


def _write(path: str, clustered: bool) -> dict[int, dict]:
    """The sequences written out of seq_id order, in three batches."""
    seqs = _seqs()
    with RoutingStore(path) as store:
        new_run(store)
        for order in ([5, 0, 9], [11, 2], [1, 3, 4, 6, 7, 8, 10]):
            meta = [
                {"seq_id": i, "label": LABELS[i % 3], "prompt_set": f"set{i % 2}"} for i in order
            ]
            store.write_batch("run-a", meta, batch_of([seqs[i] for i in order]))
        if clustered:
            store.finish_run("run-a")
    return seqs


@pytest.fixture(scope="module", params=["token-order", "clustered"])
def store_path(request, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("src") / f"{request.param}.duckdb")
    _write(path, clustered=request.param == "clustered")
    return path


def _concat(chunks: list[Trace]) -> dict[str, np.ndarray]:
    return {
        "experts": np.concatenate([c.experts for c in chunks]),
        "weights": np.concatenate([c.weights for c in chunks]),
        "phase": np.concatenate([c.phase for c in chunks]),
        "token_ids": np.concatenate([c.token_ids for c in chunks]),
        "positions": np.concatenate([c.positions for c in chunks]),
        "in_target": np.concatenate([c.in_target for c in chunks]),
        "seq_ids": np.concatenate([c.seq_ids for c in chunks]),
        "labels": np.concatenate([c.labels for c in chunks]),
        "lengths": np.concatenate([c.seq_lengths for c in chunks]),
    }


def _whole(t: Trace) -> dict[str, np.ndarray]:
    return _concat([t])


def _assert_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def _reference(seqs: dict[int, dict], phase: str = "all", labels=None, layers=None) -> dict:
    """The expected arrays, built from the sequences as written (seq_id order)."""
    cols = [LAYERS.index(x) for x in (layers or LAYERS)]
    keep_ids = [i for i in range(N_SEQ) if labels is None or LABELS[i % 3] in labels]
    parts: dict[str, list] = {
        k: []
        for k in (
            "experts",
            "weights",
            "phase",
            "token_ids",
            "positions",
            "in_target",
            "seq_ids",
            "labels",
            "lengths",
        )
    }
    for i in keep_ids:
        s = seqs[i]
        m = (
            np.ones(len(s["phase"]), bool)
            if phase == "all"
            else s["phase"] == ("prefill", "decode").index(phase)
        )
        if not m.any():
            continue
        parts["experts"].append(s["experts"][m][:, cols])
        parts["weights"].append(s["weights"][m][:, cols])
        parts["phase"].append(s["phase"][m])
        parts["token_ids"].append(s["token_ids"][m])
        parts["positions"].append(np.arange(len(m), dtype=np.int32)[m])
        parts["in_target"].append(np.zeros(m.sum(), bool))
        parts["seq_ids"].append([i])
        parts["labels"].append(np.asarray([LABELS[i % 3]], dtype=object))
        parts["lengths"].append([m.sum()])
    return {k: np.concatenate(v) for k, v in parts.items()}


@pytest.mark.parametrize("max_rows", [1, 7, 40, 10**9])
@pytest.mark.parametrize(
    ("phase", "labels", "layers"),
    [
        ("all", None, None),
        ("prefill", None, [3, 0]),
        ("decode", ["prose"], None),
        ("all", ["prose", "code"], [2]),
    ],
)
def test_store_chunks_equal_the_written_run(store_path, max_rows, phase, labels, layers):
    want = _reference(_seqs(), phase, labels, layers)
    with RoutingStore(store_path, read_only=True) as store:
        src = store.source("run-a", phase=phase, labels=labels)
        chunks = list(src.chunks(layers=layers, max_rows=max_rows))
        whole = store.load_trace("run-a", phase=phase, labels=labels, layers=layers)
    assert all(c.num_tokens * c.num_layers <= max_rows or c.num_sequences == 1 for c in chunks)
    assert sum(c.num_sequences for c in chunks) == src.info.num_sequences
    _assert_equal(_concat(chunks), want)
    _assert_equal(_whole(whole), want)
    assert src.info.num_tokens == len(want["phase"])


def test_chunks_without_weights_hold_the_same_experts(store_path):
    with RoutingStore(store_path, read_only=True) as store:
        src = store.source("run-a")
        for layers in (None, [3, 0]):
            with_w = list(src.chunks(layers=layers, max_rows=25))
            without = list(src.chunks(layers=layers, max_rows=25, with_weights=False))
            assert all(c.weights is None for c in without)
            assert all(c.weights is not None for c in with_w)
            for a, b in zip(with_w, without, strict=True):
                assert np.array_equal(a.experts, b.experts)
                assert np.array_equal(a.token_ids, b.token_ids)
    mem = list(InMemorySource(_trace_of(store_path)).chunks(with_weights=False))
    assert all(c.weights is None for c in mem)


def _trace_of(path: str) -> Trace:
    with RoutingStore(path, read_only=True) as store:
        return store.load_trace("run-a")


def test_a_source_caps_duckdb_memory_on_read_only_connections(store_path, tmp_path):
    def limit(store: RoutingStore) -> str:
        return store.con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]

    with RoutingStore(store_path, read_only=True) as store:
        store.con.execute("SET memory_limit = '8GiB'")
        store.source("run-a")
        assert limit(store) == "512.0 MiB"  # blocks read are not all kept cached
        store.con.execute("SET memory_limit = '100MiB'")
        store.source("run-a")
        assert limit(store) == "100.0 MiB"  # never raised
    with RoutingStore(tmp_path / "w.duckdb") as writable:
        new_run(writable)
        writable.con.execute("SET memory_limit = '8GiB'")
        writable.source("run-a")
        assert limit(writable) == "8.0 GiB"  # a writer (clustering sorts) keeps its own


def test_in_memory_source_chunks_equal_the_trace(store_path):
    with RoutingStore(store_path, read_only=True) as store:
        trace = store.load_trace("run-a")
    src = InMemorySource(trace)
    for max_rows in (1, 13, 10**9):
        _assert_equal(_concat(list(src.chunks(max_rows=max_rows))), _whole(trace))
    sub = list(src.chunks(layers=[3], seq_range=(2, 7), max_rows=5))
    _assert_equal(_concat(sub), _whole(trace.slice_sequences(2, 7).select_layers([3])))
    assert src.select(phase="decode").info.num_tokens == int((trace.phase == 1).sum())


def test_parquet_export_reads_the_same(store_path, tmp_path):
    with RoutingStore(store_path, read_only=True) as store:
        want = _whole(store.load_trace("run-a"))
        export_parquet(store, "run-a", tmp_path / "pq")
    src = open_source(str(tmp_path / "pq"), "run-a")
    _assert_equal(_concat(list(src.chunks(max_rows=30))), want)


def test_sources_pickle_as_where_to_reopen_them(store_path):
    with RoutingStore(store_path, read_only=True) as store:
        src = store.source("run-a", phase="prefill", labels=["code"])
        want = _concat(list(src.chunks(max_rows=20)))
        again = pickle.loads(pickle.dumps(src))
        assert again.path == store_path and again.info == src.info
        _assert_equal(_concat(list(again.chunks(max_rows=20))), want)
    with RoutingStore(":memory:") as mem:
        new_run(mem)
        with pytest.raises(StoreError, match="in-memory store") as exc:
            pickle.dumps(mem.source("run-a"))
    assert "\n" not in str(exc.value)


def test_one_sequence_and_bad_selections(store_path):
    with RoutingStore(store_path, read_only=True) as store:
        one = store.sequence_trace("run-a", 4)
        assert one.num_sequences == 1 and list(one.seq_ids) == [4]
        with pytest.raises(StoreError, match="no sequence 99"):
            store.sequence_trace("run-a", 99)
        with pytest.raises(InvalidParameterError, match=r"label\(s\) \['nope'\] not in run"):
            store.source("run-a", labels=["nope"])
        with pytest.raises(InvalidParameterError, match="not MoE layers"):
            next(store.source("run-a").chunks(layers=[1]))
        with pytest.raises(InvalidParameterError, match="repeat a layer"):
            next(store.source("run-a").chunks(layers=[0, 0]))


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=0, max_size=30),
    layers=st.integers(1, 4),
    max_rows=st.integers(1, 60),
    align=st.integers(1, 4),
)
def test_plan_chunks_covers_in_order_and_respects_the_bounds(lengths, layers, max_rows, align):
    chunks = plan_chunks(np.asarray(lengths, dtype=np.int64), layers, max_rows, align)
    if not lengths:
        assert chunks == []
        return
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    for (a, b), (c, _) in zip(chunks, chunks[1:], strict=False):
        assert b == c and a < b
    for a, b in chunks:
        assert a % align == 0
        rows = sum(lengths[a:b]) * layers
        one_group = b - a <= align
        assert rows <= max_rows or one_group


def test_speculative_rankings_round_trip(tmp_path):
    """Recorded speculative rankings [N, L, D, m] come back in token order, only when asked."""
    import dataclasses

    rng = np.random.default_rng(2)
    seqs = _seqs()
    path = str(tmp_path / "spec.duckdb")
    want = {}
    with RoutingStore(path) as store:
        new_run(store)
        for order in ([3, 1], [0, 2]):
            batch = batch_of([seqs[i] for i in order])
            spec = rng.integers(-1, 8, (batch.num_tokens, len(LAYERS), 2, 4)).astype(np.int16)
            store.write_batch(
                "run-a",
                [{"seq_id": i} for i in order],
                dataclasses.replace(batch, speculative=spec),
            )
            for b, i in enumerate(order):
                want[i] = spec[batch.sequence(b)]
        store.finish_run("run-a")
        src = store.source("run-a")
        assert (src.info.speculative_distances, src.info.speculative_width) == (2, 4)
        got = list(src.chunks(max_rows=9, with_speculative=True))
        assert all(c.speculative is None for c in src.chunks())
        sub = list(src.select(phase="prefill").chunks(layers=[3], with_speculative=True))
    expect = np.concatenate([want[i] for i in sorted(want)])
    assert np.array_equal(np.concatenate([c.speculative for c in got]), expect)
    pre = np.concatenate([want[i][seqs[i]["phase"] == 0][:, [2]] for i in sorted(want)])
    assert np.array_equal(np.concatenate([c.speculative for c in sub]), pre)
