"""Prefetch predictability: hand-computed recall/precision, plain-Python references for every
predictor, the held-out split (the transition fit never sees held-out sequences), streaming
exactness and the store path with recorded speculative rankings."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routescope.analysis import prefetch as pf
from routescope.core.errors import InvalidParameterError
from routescope.core.source import InMemorySource
from routescope.core.trace import Trace


def trace_of(rows: list[list[list[list[int]]]], num_experts: int, **kw) -> Trace:
    """rows[s][t][l] = token t's experts at layer l in rank order, per sequence s."""
    return Trace.from_sequences([np.array(s, dtype=np.int16) for s in rows], num_experts, **kw)


def pooled(df: pl.DataFrame, predictor: str, width: int, phase: str = "prefill") -> dict:
    row = df.filter(
        (pl.col("predictor") == predictor)
        & (pl.col("width") == width)
        & pl.col("layer").is_null()
        & (pl.col("phase") == phase)
    )
    assert row.height == 1, row
    return row.to_dicts()[0]


# one sequence, 4 tokens, 2 layers, E = 6, k = 2
SEQ = [
    [[0, 1], [3, 4]],
    [[1, 2], [4, 5]],
    [[2, 3], [0, 5]],
    [[0, 1], [3, 4]],
]


# ---- hand-computed ---------------------------------------------------------------------------------
def test_previous_token_window_and_oracle_by_hand():
    tr = trace_of([SEQ], 6)
    df = pf.prefetch_recall(
        tr, predictors=["previous-token", "window-2", "oracle"], widths=[1, 2, 3], evaluate="all"
    )
    # previous-token, layer 0: t1 gets [0,1] vs {1,2}: 1 hit; t2 [1,2] vs {2,3}: 1; t3 [2,3] vs
    # {0,1}: 0. Layer 1: t1 [3,4] vs {4,5}: 1; t2 [4,5] vs {0,5}: 1; t3 [0,5] vs {3,4}: 0.
    p2 = pooled(df, "previous-token", 2)
    assert (p2["tokens"], p2["covered"], p2["hits"], p2["predicted"]) == (8, 6, 4, 12)
    assert p2["recall"] == pytest.approx(4 / (2 * 6))
    assert p2["precision"] == pytest.approx(4 / (2 * 6))
    assert p2["coverage"] == pytest.approx(6 / 8)
    # top-1 = rank 0 of the previous token: layer 0 t1 0∉{1,2}, t2 1∉{2,3}, t3 2∉{0,1};
    # layer 1: t1 3∉{4,5}, t2 4∉{0,5}, t3 0∉{3,4}
    assert pooled(df, "previous-token", 1)["hits"] == 0
    # m = 3 > k: previous-token still names k experts; precision counts m
    p3 = pooled(df, "previous-token", 3)
    assert (p3["hits"], p3["predicted"]) == (4, 12)
    assert p3["precision"] == pytest.approx(4 / (3 * 6))
    # window-2 at layer 0, t3: tokens t1 {1,2}, t2 {2,3} -> counts 2:2, then 3 (seen at t2)
    # before 1 (t1): [2, 3, 1] vs {0, 1}: m=2 no hit, m=3 one hit
    w = df.filter((pl.col("predictor") == "window-2") & (pl.col("layer") == 0))
    by_m = dict(zip(w["width"], w["hits"], strict=True))
    # t1 [0,1]: hits {1}; t2 window {0,1},{1,2} -> 1 (count 2), then 2 (t1, rank 1) before 0
    # (t0): [1, 2, 0] vs {2,3}: m=1 0, m=2 1, m=3 1; t3: m=1 0, m=2 0, m=3 1
    assert by_m == {1: 0 + 0 + 0, 2: 1 + 1 + 0, 3: 1 + 1 + 1}
    o = pooled(df, "oracle", 2)
    assert (o["covered"], o["recall"], o["precision"]) == (8, 1.0, 1.0)
    assert pooled(df, "oracle", 1)["recall"] == pytest.approx(0.5)
    assert pooled(df, "oracle", 3)["precision"] == pytest.approx(2 / 3)
    assert set(df["chance"].unique()) == {1 / 6, 2 / 6, 3 / 6}


def test_speculative_rankings_by_hand_and_uncovered_layers():
    # speculative [N, L, D=1, m=3]: layer 0 has no layer l-1 (-1); layer 1 ranks given
    spec = np.full((4, 2, 1, 3), -1, dtype=np.int16)
    spec[:, 1, 0] = [[3, 0, 4], [5, 1, 2], [1, 2, 3], [4, 3, 0]]
    tr = trace_of([SEQ], 6, speculative=spec)
    df = pf.prefetch_recall(tr, predictors=["speculative"], widths=[1, 3])
    assert df["predictor"].unique().to_list() == ["speculative-1"]
    assert df["distance"].unique().to_list() == [1]
    layer0 = df.filter(pl.col("layer") == 0)
    assert layer0["covered"].to_list() == [0, 0] and layer0["recall"].to_list() == [None, None]
    # layer 1: m=1: 3∈{3,4} 5∈{4,5} 1∉{0,5} 4∈{3,4} -> 3 hits; m=3: 2 + 1 + 0 + 2 = 5
    p1, p3 = pooled(df, "speculative-1", 1), pooled(df, "speculative-1", 3)
    assert (p1["covered"], p1["hits"], p3["hits"]) == (4, 3, 5)
    assert p1["coverage"] == pytest.approx(0.5)
    assert p3["recall"] == pytest.approx(5 / 8) and p3["precision"] == pytest.approx(5 / 12)


def test_speculative_needs_recorded_rankings():
    tr = trace_of([SEQ], 6)
    with pytest.raises(InvalidParameterError, match=r"--speculative D"):
        pf.prefetch_recall(tr, predictors=["speculative-1"])
    spec = np.full((4, 2, 1, 2), -1, dtype=np.int16)
    with pytest.raises(InvalidParameterError, match=r"distances 1\.\.1 only"):
        pf.prefetch_recall(trace_of([SEQ], 6, speculative=spec), predictors=["speculative-2"])
    # the default set leaves speculative out when nothing was recorded
    assert not any(
        n.startswith("speculative") for n in pf.default_predictors(InMemorySource(tr).info)
    )


def test_registry_names_and_errors():
    names = [p.name for p in pf.registered()]
    assert names == ["speculative-<d>", "previous-token", "window-<W>", "transition-<d>", "oracle"]
    assert pf.get_predictor("window-16")[1] == 16
    assert pf.get_predictor("speculative")[1] == 0
    assert pf.get_predictor("Transition-2")[1] == 2
    with pytest.raises(InvalidParameterError, match="unknown predictor 'window-0'.*window-<W>"):
        pf.get_predictor("window-0")
    with pytest.raises(ValueError, match="already registered"):
        pf.register(pf.registered()[1])
    assert {p.needs for p in pf.registered()} == set(pf.NEEDS)
    info = InMemorySource(trace_of([SEQ], 6)).info
    specs = pf.resolve_predictors(["transition", "transition-1", "oracle"], [1], info)
    assert [s.name for s in specs] == ["transition-1", "oracle"]
    with pytest.raises(InvalidParameterError, match="below the run's 2 MoE layers"):
        pf.resolve_predictors(["transition-2"], [1], info)


# ---- the held-out split ----------------------------------------------------------------------------
def test_split_is_by_sequence_id_only():
    ids = np.arange(2000)
    a = pf.is_train(ids, 0.3)
    assert a.mean() == pytest.approx(0.3, abs=0.04)
    assert np.array_equal(pf.is_train(ids[::-1], 0.3), a[::-1])  # order does not matter
    assert np.array_equal(pf.is_train(ids[500:700], 0.3), a[500:700])
    assert np.all(pf.is_train(ids, 0.3) <= pf.is_train(ids, 0.6))  # nested splits
    for bad in (0, 1, 1.5):
        with pytest.raises(InvalidParameterError, match="strictly between 0 and 1"):
            pf.check_train_split(bad)


def _split_trace(train_split: float) -> tuple[Trace, np.ndarray]:
    """20 sequences: train ones route 0 -> 1 (layer 0 -> layer 1), held-out ones 0 -> 2, and
    held-out sequences are longer, so a fit that saw them would predict 2."""
    ids = np.arange(20)
    train = pf.is_train(ids, train_split)
    assert 2 <= train.sum() <= 18
    seqs = []
    for is_tr in train:
        tok = [[0], [1]] if is_tr else [[0], [2]]
        seqs.append([tok] * (3 if is_tr else 12))
    return trace_of(seqs, 4), train


def test_transition_is_fitted_on_train_sequences_only():
    tr, train = _split_trace(0.5)
    fit = pf.fit_transition(tr, [1], 0.5)
    n_train_tokens = 3 * int(train.sum())
    assert (fit.train_sequences, fit.train_tokens) == (int(train.sum()), n_train_tokens)
    assert fit.pairs[0, 1, 0, 1] == n_train_tokens and fit.pairs[0, 1, 0, 2] == 0
    assert fit.cond[0, 1, 0] == n_train_tokens
    assert fit.marg[1].tolist() == [0, n_train_tokens, 0, 0]
    df = pf.prefetch_recall(tr, predictors=["transition", "oracle"], widths=[1], train_split=0.5)
    t = pooled(df, "transition-1", 1)
    # evaluated on held-out sequences only: 12 tokens x 2 layers each, layer 0 uncovered
    n_held = int((~train).sum())
    assert t["evaluated_on"] == "held-out" and t["tokens"] == 24 * n_held
    assert t["covered"] == 12 * n_held
    assert t["hits"] == 0  # predicts 1 (train), held-out tokens use 2
    assert pooled(df, "oracle", 1)["tokens"] == 24 * n_held  # auto: oracle on held-out too
    # changing held-out sequences changes nothing in the fit
    other = trace_of([[[[0], [1]]] * 3 if is_tr else [[[3], [3]]] * 5 for is_tr in train], 4)
    fit2 = pf.fit_transition(other, [1], 0.5)
    assert np.array_equal(fit2.pairs, fit.pairs) and np.array_equal(fit2.marg, fit.marg)


def test_split_leaves_no_train_sequence():
    tr = trace_of([SEQ], 6, seq_ids=np.array([3]))
    side = bool(pf.is_train(np.array([3]), 0.01)[0])
    assert not side
    with pytest.raises(InvalidParameterError, match="none of the 1 sequences in the train set"):
        pf.prefetch_recall(tr, predictors=["transition"], train_split=0.01)


def test_evaluate_choices():
    tr, train = _split_trace(0.5)
    everyone = pf.prefetch_recall(tr, predictors=["oracle"], widths=[1], evaluate="auto")
    assert pooled(everyone, "oracle", 1)["tokens"] == 2 * len(tr.experts)
    held = pf.prefetch_recall(tr, predictors=["oracle"], widths=[1], evaluate="heldout")
    assert pooled(held, "oracle", 1)["evaluated_on"] == "held-out"
    mixed = pf.prefetch_recall(tr, predictors=["oracle", "transition"], widths=[1], evaluate="all")
    assert pooled(mixed, "oracle", 1)["evaluated_on"] == "all"
    assert pooled(mixed, "transition-1", 1)["evaluated_on"] == "held-out"
    with pytest.raises(InvalidParameterError, match="unknown evaluate"):
        pf.prefetch_recall(tr, predictors=["oracle"], evaluate="train")


# ---- plain references and properties ---------------------------------------------------------------
def ref_window(seq: np.ndarray, t: int, layer: int, W: int) -> list[int]:
    cnt: Counter = Counter()
    last: dict[int, tuple[int, int]] = {}
    for u in range(max(0, t - W), t):
        for j, e in enumerate(seq[u, layer]):
            if e >= 0:
                cnt[e] += 1
                last[e] = (u, j)
    return sorted(cnt, key=lambda e: (-cnt[e], -last[e][0], last[e][1], e))


def ref_transition(seqs, train, d, t_row, layer) -> list[int]:
    """P(b at l | a at l-d) from train sequences, summed over the token's a's."""
    pairs: Counter = Counter()
    cond: Counter = Counter()
    marg: Counter = Counter()
    for s, is_tr in zip(seqs, train, strict=True):
        if not is_tr:
            continue
        for row in s:
            for b in row[layer]:
                marg[b] += 1
            for a in row[layer - d]:
                cond[a] += 1
                for b in row[layer]:
                    pairs[a, b] += 1
    E = 6
    score = [sum(pairs[a, b] / cond[a] for a in t_row[layer - d] if cond[a]) for b in range(E)]
    return sorted(range(E), key=lambda b: (-score[b], -marg[b], b))


def ref_recall(seqs, phases, predictor: str, m: int, train=None) -> dict:
    hits = covered = tokens = predicted = 0
    for si, s in enumerate(seqs):
        if train is not None and train[si]:
            continue
        for t in range(len(s)):
            for layer in range(s.shape[1]):
                tokens += 1
                if predictor == "oracle":
                    p = list(s[t, layer])
                elif predictor.startswith("window") or predictor == "previous-token":
                    W = 1 if predictor == "previous-token" else int(predictor.split("-")[1])
                    p = ref_window(s, t, layer, W)
                else:
                    if layer < 1:
                        continue
                    p = ref_transition(seqs, train, 1, s[t], layer)
                if not p:
                    continue
                covered += 1
                p = p[:m]
                predicted += len(p)
                hits += len(set(p) & set(s[t, layer].tolist()))
    return {"hits": hits, "covered": covered, "tokens": tokens, "predicted": predicted}


def random_seqs(draw, n_seq, E=6, k=2, L=3):
    seqs = []
    for _ in range(n_seq):
        T = draw(st.integers(1, 7))
        rows = [[draw(st.permutations(range(E)))[:k] for _ in range(L)] for _ in range(T)]
        seqs.append(np.array(rows, dtype=np.int16))
    return seqs


@st.composite
def traces(draw):
    n_seq = draw(st.integers(1, 5))
    return random_seqs(draw, n_seq)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=traces(), m=st.integers(1, 5), W=st.integers(1, 4))
def test_window_and_oracle_match_the_reference(seqs, m, W):
    tr = Trace.from_sequences(seqs, 6)
    df = pf.prefetch_recall(
        tr, predictors=["previous-token", f"window-{W}", "oracle"], widths=[m], evaluate="all"
    )
    for name in ("previous-token", f"window-{W}", "oracle"):
        want = ref_recall(seqs, None, name, m)
        got = pooled(df, name, m)
        assert {k: got[k] for k in want} == want, name


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=traces(), m=st.integers(1, 4))
def test_transition_matches_the_reference(seqs, m):
    ids = np.arange(len(seqs))
    train = pf.is_train(ids, 0.5)
    tr = Trace.from_sequences(seqs, 6)
    if not train.any():
        with pytest.raises(InvalidParameterError):
            pf.prefetch_recall(tr, predictors=["transition-1"], widths=[m])
        return
    df = pf.prefetch_recall(tr, predictors=["transition-1"], widths=[m])
    want = ref_recall(seqs, None, "transition", m, train=train)
    got = pooled(df, "transition-1", m)
    assert {k: got[k] for k in want} == want


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seqs=traces(), max_rows=st.integers(1, 40))
def test_results_do_not_depend_on_chunking(seqs, max_rows):
    rng = np.random.default_rng(len(seqs))
    n = sum(len(s) for s in seqs)
    phase = (rng.random(n) < 0.4).astype(np.uint8)
    spec = rng.integers(-1, 6, (n, 3, 2, 4)).astype(np.int16)
    tr = Trace.from_sequences(seqs, 6, speculative=spec)
    tr = dataclasses.replace(tr, phase=phase)
    names = ["speculative", "previous-token", "window-3", "oracle"]
    whole = pf.prefetch_recall(tr, predictors=names, widths=[1, 2, 4])
    cut = pf.prefetch_recall(tr, predictors=names, widths=[1, 2, 4], max_rows=max_rows)
    assert whole.equals(cut)
    # recall never falls as m grows
    for (_, _, _), grp in whole.group_by(["phase", "predictor", "layer"]):
        hits = grp.sort("width")["hits"].to_list()
        assert hits == sorted(hits)


def test_phases_apart_and_phase_choices():
    tr = trace_of([SEQ, SEQ], 6)
    tr = dataclasses.replace(tr, phase=np.array([0, 0, 1, 1] * 2, dtype=np.uint8))
    df = pf.prefetch_recall(tr, predictors=["previous-token"], widths=[2])
    assert sorted(df["phase"].unique()) == ["decode", "prefill"]
    # decode tokens t2, t3 predicted from t1, t2 (prefill context counts)
    assert pooled(df, "previous-token", 2, "decode")["covered"] == 2 * 2 * 2
    both = pf.prefetch_recall(tr, predictors=["previous-token"], widths=[2], phase="all")
    assert pooled(both, "previous-token", 2, "all")["hits"] == sum(
        pooled(df, "previous-token", 2, p)["hits"] for p in ("prefill", "decode")
    )
    with pytest.raises(InvalidParameterError, match="no decode tokens"):
        pf.prefetch_recall(trace_of([SEQ], 6), predictors=["oracle"], phase="decode")
    with pytest.raises(InvalidParameterError, match="width 7 is outside 1..6"):
        pf.prefetch_recall(trace_of([SEQ], 6), predictors=["oracle"], widths=[7])


def test_reductions_ask_for_speculative_rankings_only_when_a_predictor_reads_them():
    """`Reduction.speculative` is what makes the streaming driver read the recorded rankings."""
    from routescope.analysis import offload as ol
    from routescope.analysis.streaming import map_unit, plan_units

    spec = np.full((4, 2, 1, 2), -1, dtype=np.int16)
    src = InMemorySource(trace_of([SEQ], 6, speculative=spec))
    asked: list[bool] = []

    class Recording(InMemorySource):
        def chunks(self, **kw):  # type: ignore[override]
            asked.append(kw["with_speculative"])
            return super().chunks(**kw)

    for names, want in ((["speculative-1", "oracle"], True), (["previous-token"], False)):
        specs = pf.resolve_predictors(names, [1], src.info)
        cost = ol.OffloadCost(expert_bytes=1, layer_ms=1.0)
        for red in (
            pf.prefetch_reduction(src.info, specs, [2]),
            ol.offload_reduction(src.info, cost, specs, ["lru"], [2], capacities=[2]),
        ):
            assert red.speculative is want
            asked.clear()
            rec = Recording(src.trace)
            for unit in plan_units(rec, red):
                map_unit(rec, red, unit)
            assert asked and set(asked) == {want}
    assert pf.transition_fit_reduction(src.info, [1]).speculative is False


# ---- through the store ----------------------------------------------------------------------------
def test_store_source_with_speculative_rankings(tmp_path):
    from test_store import LAYERS, batch_of, make_seq, new_run

    from routescope.store.store import RoutingStore

    rng = np.random.default_rng(5)
    seqs = {i: make_seq(rng, 4 + i % 3, i % 2 * 3) for i in range(8)}
    path = str(tmp_path / "spec.duckdb")
    with RoutingStore(path) as store:
        new_run(store)
        batch = batch_of([seqs[i] for i in range(8)])
        spec = rng.integers(-1, 8, (batch.num_tokens, len(LAYERS), 2, 4)).astype(np.int16)
        store.write_batch(
            "run-a", [{"seq_id": i} for i in range(8)], dataclasses.replace(batch, speculative=spec)
        )
        store.finish_run("run-a")
        names = ["speculative", "previous-token", "transition", "oracle"]
        got = pf.prefetch_recall(store.source("run-a"), predictors=names, max_rows=7)
        whole = store.load_trace("run-a")
    want = pf.prefetch_recall(
        dataclasses.replace(whole, speculative=spec), predictors=names, max_rows=10**6
    )
    assert got.equals(want)
    assert sorted(got["predictor"].unique()) == [
        "oracle",
        "previous-token",
        "speculative-1",
        "speculative-2",
        "transition-1",
        "transition-2",
    ]
