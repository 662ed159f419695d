"""Specialization, co-activation, saturation and localization streamed in chunks (DESIGN §7):
every result over a store read chunk by chunk (chunks of one sequence, odd sizes, one chunk for
the whole run), or over a Parquet export, equals the result over the whole run in memory, bit
for bit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_store import LAYERS, batch_of, make_seq, new_run

from routescope.analysis import localization as lo
from routescope.analysis import specialization as sp
from routescope.core.errors import InvalidParameterError
from routescope.core.source import plan_chunks
from routescope.core.trace import Trace
from routescope.store.parquet import export_parquet
from routescope.store.store import RoutingStore

N_SEQ = 11
LABELS = ["code", "prose", "math", None]


def _seqs(seed: int = 3) -> dict[int, dict]:
    """Sequences of mixed lengths (one of a single token), some with decode tokens."""
    rng = np.random.default_rng(seed)
    return {i: make_seq(rng, 1 + (i * 5) % 8, (i % 3) * 2) for i in range(N_SEQ)}


def _twin(seqs: dict[int, dict], seed: int) -> dict[int, dict]:
    """The same tokens routed differently (a steered run, another checkpoint)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, s in seqs.items():
        t = dict(s)
        t["experts"] = np.argsort(rng.random(s["probs"].shape), axis=-1)[
            ..., : s["experts"].shape[2]
        ]
        t["experts"] = t["experts"].astype(np.int16)
        out[i] = t
    return out


def _write(store: RoutingStore, run_id: str, seqs: dict[int, dict], weights: bool = True) -> None:
    """The sequences out of seq_id order, in three batches, through the store's writer."""
    new_run(store, run_id, has_weights=weights)
    ids = sorted(seqs)
    for order in (ids[5:8], ids[:2], ids[2:5] + ids[8:]):
        if not order:
            continue
        meta = [
            {
                "seq_id": i,
                "label": LABELS[i % 4],
                "prompt_set": f"set{i % 2}",
                "prompt_id": f"p{i}",
            }
            for i in order
        ]
        batch = batch_of([seqs[i] for i in order])
        if not weights:
            batch = dataclasses.replace(batch, weights=None)
        in_target = np.concatenate([seqs[i]["in_target"] for i in order])
        store.write_batch(run_id, meta, batch, None, in_target)
    store.finish_run(run_id)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """run-a; run-b: the same tokens routed otherwise; run-n: run-a without gate weights;
    run-short: run-a's first five sequences; run-x: run-a with other token ids."""
    path = str(tmp_path_factory.mktemp("experts") / "s.duckdb")
    seqs = _seqs()
    other_ids = {i: {**s, "token_ids": s["token_ids"] + 1} for i, s in seqs.items()}
    with RoutingStore(path) as store:
        _write(store, "run-a", seqs)
        _write(store, "run-b", _twin(seqs, 5))
        _write(store, "run-n", seqs, weights=False)
        _write(store, "run-short", {i: seqs[i] for i in range(5)})
        _write(store, "run-x", other_ids)
        export_parquet(store, "run-a", Path(path).parent / "pq")
    return path


def assert_same(a: pl.DataFrame, b: pl.DataFrame) -> None:
    """Equal frames, bit for bit (NaN equals NaN)."""
    assert a.columns == b.columns and a.height == b.height and a.dtypes == b.dtypes
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), col
        else:
            assert (x == y).all(), col


#: name → f(data, data_b, **run) for every streamed analysis of §4.3.
CASES: dict[str, Callable[..., Any]] = {
    "load": lambda d, b, **kw: sp.expert_load(d, **kw),
    "load_summary": lambda d, b, **kw: sp.load_summary(d, **kw),
    "load_layer": lambda d, b, **kw: sp.expert_load(d, layers=[2], **kw),
    "domain": lambda d, b, **kw: sp.domain_specialization(d, **kw),
    "domain_sets": lambda d, b, **kw: sp.domain_specialization(d, by="prompt_set", **kw),
    "domain_cv": lambda d, b, **kw: sp.domain_cv(d, **kw),
    "vocab": lambda d, b, **kw: sp.vocabulary_specialization(d, min_count=2, **kw),
    "vocab_next": lambda d, b, **kw: sp.vocabulary_specialization(d, 2, True, **kw),
    "vocab_layers": lambda d, b, **kw: sp.vocabulary_specialization(d, 1, layers=[3, 0], **kw),
    **{
        f"coact_{layer}": (lambda d, b, layer=layer, **kw: sp.coactivation(d, layer, **kw))
        for layer in LAYERS
    },
    "cross_0": lambda d, b, **kw: sp.cross_layer_coactivation(d, 0, **kw),
    "cross_2": lambda d, b, **kw: sp.cross_layer_coactivation(d, 2, **kw),
    "saturation": lambda d, b, **kw: sp.router_saturation(d, b, **kw),
}

#: localization specs over one run, and whether to score by weight.
LOCALIZE = [
    (("label:code", "rest"), False),
    (("label:code", "label:prose"), True),
    (("set:set0", "rest"), False),
    (("target", "rest"), True),
    (("target", "label:math"), False),
    (("set:set1", "set:set0"), True),
]


def _localize(data: Any, specs: tuple[str, str], weight: bool, **kw: Any) -> pl.DataFrame:
    t, c = lo.token_sets_from_specs(data, *specs)
    return lo.localize(t, c, n_boot=40, n_perm=60, seed=7, weight=weight, **kw)


@pytest.mark.parametrize("phase", ["all", "prefill"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_streamed_equals_in_memory(store_path: str, name: str, phase: str) -> None:
    fn = CASES[name]
    with RoutingStore(store_path, read_only=True) as store:
        trace, other = store.load_trace("run-a", phase), store.load_trace("run-b", phase)
        lengths = store.source("run-a", phase=phase).seq_lengths()
        # max_rows=1: a chunk per sequence; 10**9: one chunk that splits nothing.
        assert len(plan_chunks(lengths, len(LAYERS), 1)) == len(lengths) == N_SEQ
        assert len(plan_chunks(lengths, len(LAYERS), 10**9)) == 1
        want = fn(trace, other)
        assert want.height > 0
        for max_rows in (1, 7, 40, 10**9):
            assert_same(fn(trace, other, max_rows=max_rows), want)
            src, src_b = store.source("run-a", phase=phase), store.source("run-b", phase=phase)
            assert_same(fn(src, src_b, max_rows=max_rows), want)
    pq = RoutingStore(str(Path(store_path).parent / "pq"), read_only=True)
    try:
        if name != "saturation":
            assert_same(fn(pq.source("run-a", phase=phase), None, max_rows=9), want)
    finally:
        pq.close()


def test_vocabulary_by_sort_equals_by_table(store_path: str, monkeypatch) -> None:  # noqa: ANN001
    with RoutingStore(store_path, read_only=True) as store:
        src = store.source("run-a")
        want = [sp.vocabulary_specialization(src, 1, nt, max_rows=10) for nt in (False, True)]
        monkeypatch.setattr(sp, "_DENSE_BINS", 0)
        monkeypatch.setattr(sp, "_DENSE_PER_KEY", 0)
        for nt, w in zip((False, True), want, strict=True):
            assert_same(sp.vocabulary_specialization(src, 1, nt, max_rows=10), w)
            assert_same(sp.vocabulary_specialization(store.load_trace("run-a"), 1, nt), w)


def test_domain_counts_serve_all_four_in_one_pass(store_path: str) -> None:
    calls: list[tuple[int, int]] = []
    with RoutingStore(store_path, read_only=True) as store:
        trace = store.load_trace("run-a")
        counts = sp.domain_counts(
            store.source("run-a"), max_rows=5, progress=lambda d, t: calls.append((d, t))
        )
    total = trace.num_tokens * len(LAYERS)
    assert calls and calls[-1] == (total, total) and len(calls) > 3
    for fn in (sp.expert_load, sp.load_summary, sp.domain_specialization, sp.domain_cv):
        assert_same(fn(counts), fn(trace))
    assert int(counts.counts.sum()) == trace.num_tokens * len(LAYERS) * trace.top_k
    with pytest.raises(InvalidParameterError, match="grouped by 'label', not 'prompt_set'"):
        sp.domain_specialization(counts, by="prompt_set")
    with pytest.raises(InvalidParameterError, match="layers"):
        sp.expert_load(counts, layers=[0])


@pytest.mark.parametrize(("specs", "weight"), LOCALIZE)
def test_localize_streamed_equals_in_memory(
    store_path: str, specs: tuple[str, str], weight: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RoutingStore(store_path, read_only=True) as store:
        trace = store.load_trace("run-a")
        want = _localize(trace, specs, weight)
        for max_rows in (1, 7, 10**9):
            assert_same(_localize(trace, specs, weight, max_rows=max_rows), want)
            assert_same(_localize(store.source("run-a"), specs, weight, max_rows=max_rows), want)
        # One layer per pass (as for a run too large for all layers' per-prompt matrices):
        # the same draws for every layer, so the same numbers.
        monkeypatch.setattr(lo, "PROMPT_MATRIX_BUDGET", 1)
        assert lo._layer_groups(tuple(LAYERS), 22, 8) == [(0,), (2,), (3,)]
        assert_same(_localize(store.source("run-a"), specs, weight, max_rows=5), want)
    assert want["paired"][0] == (specs == ("target", "rest"))


def test_localize_across_runs_pairs_prompts(store_path: str, monkeypatch) -> None:  # noqa: ANN001
    with RoutingStore(store_path, read_only=True) as store:
        a, b = store.load_trace("run-a"), store.load_trace("run-b")
        # run-b's prompts in reverse order: pairing goes by (prompt set, prompt id)
        rev = np.arange(b.num_sequences)[::-1]
        b_rev = Trace.from_sequences(
            [b.slice_sequences(i, i + 1).experts for i in rev],
            num_experts=b.num_experts,
            weights=[b.slice_sequences(i, i + 1).weights for i in rev],
            layers=b.layers,
            run_id="run-b",
            seq_ids=b.seq_ids[rev],
            prompt_sets=b.prompt_sets[rev],
            prompt_ids=b.prompt_ids[rev],
        )
        want = lo.localize(b, a, n_boot=30, n_perm=30, seed=1)
        assert want["paired"].all() and want["prompts1"][0] == N_SEQ
        # (the resampling draws follow the target's prompt order, so only the scores agree)
        rev_got = lo.localize(b_rev, a, n_boot=30, n_perm=30, seed=1)
        fixed = ["rank", "layer", "expert", "n1", "n2", "a1", "a2", "rd", "w1", "w2", "paired"]
        assert_same(rev_got.select(fixed), want.select(fixed))
        for max_rows in (1, 10**9):
            got = lo.localize(
                store.source("run-b"), store.source("run-a"), 30, 30, 1, max_rows=max_rows
            )
            assert_same(got, want)
        monkeypatch.setattr(lo, "PROMPT_MATRIX_BUDGET", 1)
        got = lo.localize(store.source("run-b"), store.source("run-a"), 30, 30, 1, max_rows=3)
        assert_same(got, want)
        # label:code of run-a against label:math of run-b: other prompts, unpaired
        t, c = lo.split_labels(a, "code")[0], lo.split_labels(b, "math")[0]
        want = lo.localize(t, c, 30, 30, 2, weight=True)
        assert not want["paired"][0]
        ts = lo.split_labels(store.source("run-a"), "code")[0]
        cs = lo.split_labels(store.source("run-b"), "math")[0]
        assert_same(lo.localize(ts, cs, 30, 30, 2, weight=True, max_rows=2), want)


@settings(max_examples=25, deadline=None)
@given(max_rows=st.integers(1, 200), name=st.sampled_from(sorted(CASES)))
def test_any_chunk_size_gives_the_same_result(store_path: str, max_rows: int, name: str) -> None:
    fn = CASES[name]
    with RoutingStore(store_path, read_only=True) as store:
        src, src_b = store.source("run-a"), store.source("run-b")
        want = fn(src, src_b)
        assert_same(fn(src, src_b, max_rows=max_rows), want)


@settings(max_examples=15, deadline=None)
@given(max_rows=st.integers(1, 120), case=st.sampled_from(LOCALIZE))
def test_localize_any_chunk_size(store_path: str, max_rows: int, case: tuple) -> None:
    specs, weight = case
    with RoutingStore(store_path, read_only=True) as store:
        src = store.source("run-a")
        assert_same(_localize(src, specs, weight, max_rows=max_rows), _localize(src, specs, weight))


def test_counts_work_without_weights_and_weights_are_one_line(store_path: str) -> None:
    with RoutingStore(store_path, read_only=True) as store:
        src_n, src_a = store.source("run-n"), store.source("run-a")
        assert not src_n.info.has_weights
        for fn in (sp.expert_load, sp.domain_specialization):
            assert_same(fn(src_n), fn(src_a))
        got = _localize(src_n, ("label:code", "rest"), False, max_rows=4)
        want = _localize(src_a, ("label:code", "rest"), False)
        for col in ("rd", "ci_low", "ci_high", "p_value", "q_value", "layer", "expert"):
            assert np.array_equal(got[col].to_numpy(), want[col].to_numpy()), col
        assert got["w1"].is_nan().all()
        with pytest.raises(InvalidParameterError, match="needs gate weights") as exc:
            _localize(src_n, ("label:code", "rest"), True)
        assert "\n" not in str(exc.value)
        trace_n = store.load_trace("run-n")
        assert trace_n.weights is None
        with pytest.raises(InvalidParameterError, match="needs gate weights"):
            _localize(trace_n, ("target", "rest"), True)


def test_saturation_refuses_other_tokens_in_one_line(store_path: str) -> None:
    with RoutingStore(store_path, read_only=True) as store:
        a = store.source("run-a")
        for other in ("run-short", "run-x"):
            with pytest.raises(InvalidParameterError, match="same tokens") as exc:
                sp.router_saturation(a, store.source(other), max_rows=4)
            assert "\n" not in str(exc.value)
        same = sp.router_saturation(a, store.source("run-n"), max_rows=3)
        assert same["saturation"].to_list() == [1.0] * len(LAYERS)


def test_localize_progress_reaches_its_total(store_path: str) -> None:
    calls: list[tuple[int, int]] = []
    with RoutingStore(store_path, read_only=True) as store:
        _localize(
            store.source("run-a"),
            ("label:code", "rest"),
            False,
            max_rows=6,
            progress=lambda d, t: calls.append((d, t)),
        )
    done = [d for d, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1] and len(calls) > 3
