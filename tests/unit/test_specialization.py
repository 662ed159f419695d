"""Specialization measures (DESIGN.md §4.3): hand-computed tiny traces, brute-force references,
invariants."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routescope.analysis import specialization as sp
from routescope.core.errors import InvalidParameterError, RoutescopeError
from routescope.core.trace import Trace


def tiny() -> Trace:
    """E=4, k=2, one layer; seq0 (label a) and seq1 (label b)."""
    return Trace.from_sequences(
        [np.array([[0, 1], [0, 2], [1, 3]]), np.array([[2, 3], [0, 3]])],
        num_experts=4,
        labels=["a", "b"],
        token_ids=np.array([5, 6, 5, 6, 7]),
    )


def random_trace(seed: int, n_seq: int = 6, e: int = 6, k: int = 2, n_layers: int = 2) -> Trace:
    rng = np.random.default_rng(seed)
    seqs, labels, ids = [], [], []
    for s in range(n_seq):
        t = int(rng.integers(1, 9))
        seqs.append(rng.random((t, n_layers, e)).argsort(-1)[..., :k])
        labels.append(["x", "y", "z", None][s % 4])
        ids.append(rng.integers(0, 4, size=t))
    return Trace.from_sequences(seqs, e, labels=labels, token_ids=np.concatenate(ids))


def get(df: pl.DataFrame, **where) -> dict:
    for key, val in where.items():
        df = df.filter(pl.col(key) == val)
    assert df.height == 1, where
    return df.row(0, named=True)


# ---- load -------------------------------------------------------------------------------------
def test_load_hand_computed() -> None:
    load = sp.expert_load(tiny())
    assert load["count"].to_list() == [3, 2, 2, 3]
    assert load["share"].to_list() == pytest.approx([0.3, 0.2, 0.2, 0.3])
    summ = sp.load_summary(tiny()).row(0, named=True)
    entropy = -(2 * 0.3 * math.log(0.3) + 2 * 0.2 * math.log(0.2)) / math.log(4)
    assert summ["entropy_norm"] == pytest.approx(entropy)
    assert summ["max_over_mean"] == pytest.approx(0.3 / 0.25)
    assert summ["unused_experts"] == 0


def test_load_balanced_and_collapsed_extremes() -> None:
    balanced = Trace.from_sequences([np.array([[0, 1], [2, 3]])], num_experts=4)
    s = sp.load_summary(balanced).row(0, named=True)
    assert s["entropy_norm"] == pytest.approx(1.0) and s["max_over_mean"] == pytest.approx(1.0)
    collapsed = Trace.from_sequences([np.array([[0, 1], [0, 1]])], num_experts=4)
    s = sp.load_summary(collapsed).row(0, named=True)
    assert s["entropy_norm"] == pytest.approx(0.5)  # log 2 / log 4
    assert s["max_over_mean"] == pytest.approx(2.0) and s["unused_experts"] == 2


# ---- domain -----------------------------------------------------------------------------------
def test_domain_specialization_hand_computed() -> None:
    d = sp.domain_specialization(tiny())
    a0 = get(d, label="a", expert=0)
    assert a0["n_tokens"] == 3 and a0["count"] == 2
    assert a0["share"] == pytest.approx(2 / 3)
    assert a0["uniform"] == pytest.approx(0.5)
    assert a0["ratio_uniform"] == pytest.approx(4 / 3)
    assert a0["share_other"] == pytest.approx(1 / 2)
    assert a0["ratio_other"] == pytest.approx(4 / 3)
    a1 = get(d, label="a", expert=1)
    assert a1["share_other"] == 0.0 and a1["ratio_other"] is None  # expert 1 never fires on b
    b3 = get(d, label="b", expert=3)
    assert b3["share"] == pytest.approx(1.0) and b3["ratio_other"] == pytest.approx(3.0)


def test_domain_cv_hand_computed() -> None:
    # rates a/b: e0 (2/3, 1/2) e1 (2/3, 0) e2 (1/3, 1/2) e3 (1/3, 1); population std / mean
    cv = sp.domain_cv(tiny()).row(0, named=True)
    assert cv["cv_mean"] == pytest.approx((1 / 7 + 1 + 1 / 5 + 1 / 2) / 4)
    assert cv["cv_max"] == pytest.approx(1.0)


def brute_domain(trace: Trace, col: int) -> dict[tuple[str, int], float]:
    tok_lab = trace.token_labels
    out = {}
    for lab in trace.label_set:
        rows = [i for i in range(trace.num_tokens) if tok_lab[i] == lab]
        for e in range(trace.num_experts):
            hits = sum(1 for i in rows if e in set(trace.experts[i, col].tolist()))
            out[(lab, e)] = hits / len(rows)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_domain_matches_brute_force(seed: int) -> None:
    tr = random_trace(seed)
    d = sp.domain_specialization(tr)
    for col, layer in enumerate(tr.layers):
        ref = brute_domain(tr, col)
        for (lab, e), share in ref.items():
            assert get(d, label=lab, layer=layer, expert=e)["share"] == pytest.approx(share)
        # shares over experts sum to k for every label
        sums = d.filter(pl.col("layer") == layer).group_by("label").agg(pl.col("share").sum())
        assert sums["share"].to_list() == pytest.approx([tr.top_k] * sums.height)


def test_domain_errors() -> None:
    no_labels = Trace.from_sequences([np.array([[0, 1]])], num_experts=4)
    with pytest.raises(InvalidParameterError, match="label"):
        sp.domain_specialization(no_labels)
    with pytest.raises(InvalidParameterError, match="group by"):
        sp.domain_specialization(tiny(), by="colour")
    one_label = Trace.from_sequences([np.array([[0, 1]])], num_experts=4, labels=["a"])
    with pytest.raises(InvalidParameterError, match="two"):
        sp.domain_cv(one_label)


def test_domain_by_prompt_set() -> None:
    tr = Trace.from_sequences(
        [np.array([[0, 1]]), np.array([[2, 3]])],
        num_experts=4,
        prompt_sets=np.array(["p", "q"], dtype=object),
    )
    d = sp.domain_specialization(tr, by="prompt_set")
    assert get(d, prompt_set="p", expert=0)["share"] == 1.0
    assert get(d, prompt_set="q", expert=0)["share"] == 0.0


# ---- vocabulary -------------------------------------------------------------------------------
def test_vocabulary_input_ids_hand_computed() -> None:
    v = sp.vocabulary_specialization(tiny(), min_count=2)
    assert sorted(set(v["token_id"].to_list())) == [5, 6]  # id 7 occurs once
    # id 5: tokens [0,1] and [1,3]
    assert get(v, token_id=5, expert=1)["share"] == pytest.approx(1.0)
    assert get(v, token_id=5, expert=0)["share"] == pytest.approx(0.5)
    assert get(v, token_id=5, expert=3)["occurrences"] == 2
    assert v.filter((pl.col("token_id") == 5) & (pl.col("expert") == 2)).height == 0
    top = sp.expert_top_tokens(v, top=1)
    assert get(top, expert=1)["token_id"] == 5 and get(top, expert=2)["token_id"] == 6


def test_vocabulary_next_token_stays_within_sequence() -> None:
    v = sp.vocabulary_specialization(tiny(), min_count=1, next_token=True)
    # seq0: [0,1]->6, [0,2]->5, last dropped; seq1: [2,3]->7, last dropped.
    assert get(v, token_id=6, expert=0)["occurrences"] == 1  # would be 2 across the boundary
    assert get(v, token_id=6, expert=1)["share"] == 1.0
    assert get(v, token_id=5, expert=2)["share"] == 1.0
    assert get(v, token_id=7, expert=3)["share"] == 1.0
    assert v["count"].sum() == 3 * 2


@pytest.mark.parametrize("seed", range(4))
def test_vocabulary_matches_brute_force(seed: int) -> None:
    tr = random_trace(seed)
    v = sp.vocabulary_specialization(tr, min_count=3)
    occ = Counter(tr.token_ids.tolist())
    hits: dict[tuple[int, int, int], int] = defaultdict(int)
    for i, tid in enumerate(tr.token_ids.tolist()):
        for col, layer in enumerate(tr.layers):
            for e in tr.experts[i, col].tolist():
                hits[(layer, tid, e)] += 1
    expect = {key: c / occ[key[1]] for key, c in hits.items() if occ[key[1]] >= 3}
    got = {(r["layer"], r["token_id"], r["expert"]): r["share"] for r in v.iter_rows(named=True)}
    assert got.keys() == expect.keys()
    for key, val in expect.items():
        assert got[key] == pytest.approx(val)


def test_vocabulary_min_count_error() -> None:
    with pytest.raises(InvalidParameterError, match="min-count"):
        sp.vocabulary_specialization(tiny(), min_count=50)


# ---- co-activation ----------------------------------------------------------------------------
def test_coactivation_all_pairs_differs_from_adjacent_pairs() -> None:
    tr = Trace.from_sequences([np.array([[0, 1, 2], [0, 2, 3]])], num_experts=4)
    co = sp.coactivation(tr, 0)
    # Obviously-right references, counted by hand over the two tokens.
    assert get(co, expert_i=0, expert_j=2)["rate"] == pytest.approx(1.0)  # both tokens hold 0 & 2
    assert get(co, expert_i=0, expert_j=1)["rate"] == pytest.approx(0.5)
    assert get(co, expert_i=3, expert_j=0)["rate"] == pytest.approx(1.0)
    assert get(co, expert_i=1, expert_j=3)["rate"] == pytest.approx(0.0)
    # Counting only rank-adjacent pairs would give N(0,2)=1 (token 2 only) -> 0.5: not what we do.
    adjacent = Counter()
    for row in tr.experts[:, 0, :].tolist():
        for a, b in zip(row, row[1:], strict=False):
            adjacent[(a, b)] += 1
            adjacent[(b, a)] += 1
    assert adjacent[(0, 2)] / 2 == 0.5 != get(co, expert_i=0, expert_j=2)["rate"]
    assert co.filter(pl.col("expert_i") == pl.col("expert_j")).height == 0


@pytest.mark.parametrize("seed", range(4))
def test_coactivation_matches_brute_force(seed: int) -> None:
    tr = random_trace(seed, k=3)
    for layer in tr.layers:
        co = sp.coactivation(tr, layer)
        sets = [set(r) for r in tr.experts[:, tr.layer_position(layer), :].tolist()]
        for i, j in combinations(range(tr.num_experts), 2):
            for a, b in ((i, j), (j, i)):
                n_a = sum(a in s for s in sets)
                n_ab = sum(a in s and b in s for s in sets)
                row = get(co, expert_i=a, expert_j=b)
                assert row["n_ij"] == n_ab and row["n_i"] == n_a
                assert row["rate"] == (pytest.approx(n_ab / n_a) if n_a else None)


def test_cross_layer_coactivation_hand_computed() -> None:
    ex = np.array([[[0, 1], [2, 3]], [[0, 2], [1, 2]]])  # [T=2, L=2, k=2]
    tr = Trace.from_sequences([ex], num_experts=4, layers=[3, 7])
    co = sp.cross_layer_coactivation(tr, 3)
    assert set(co["next_layer"].to_list()) == {7}
    assert get(co, expert_i=0, expert_j=2)["rate"] == pytest.approx(1.0)
    assert get(co, expert_i=0, expert_j=3)["rate"] == pytest.approx(0.5)
    assert get(co, expert_i=0, expert_j=0)["rate"] == pytest.approx(0.0)
    assert get(co, expert_i=1, expert_j=3)["rate"] == pytest.approx(1.0)
    assert get(co, expert_i=3, expert_j=1)["rate"] is None  # expert 3 unused at layer 3
    with pytest.raises(InvalidParameterError, match="last MoE layer"):
        sp.cross_layer_coactivation(tr, 7)
    with pytest.raises(InvalidParameterError, match="not an MoE layer"):
        sp.coactivation(tr, 5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 4))
def test_coactivation_rows_sum_to_k_minus_one(seed: int, k: int) -> None:
    tr = random_trace(seed, e=6, k=k)
    co = sp.coactivation(tr, 0).drop_nulls("rate")
    sums = co.group_by("expert_i").agg(pl.col("rate").sum())["rate"].to_numpy()
    assert np.allclose(sums, k - 1)
    assert ((co["rate"] >= 0) & (co["rate"] <= 1)).all()


# ---- router saturation ------------------------------------------------------------------------
def test_router_saturation_hand_computed() -> None:
    a = Trace.from_sequences([np.array([[0, 1], [2, 3]])], num_experts=4)
    b = Trace.from_sequences([np.array([[1, 0], [2, 0]])], num_experts=4)
    r = sp.router_saturation(a, b).row(0, named=True)
    assert r["saturation"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert r["chance"] == pytest.approx(0.5)
    assert sp.router_saturation(a, a)["saturation"].to_list() == [1.0]


def test_router_saturation_errors() -> None:
    a = Trace.from_sequences([np.array([[0, 1], [2, 3]])], num_experts=4)
    other_e = Trace.from_sequences([np.array([[0, 1], [2, 3]])], num_experts=8)
    with pytest.raises(InvalidParameterError, match="experts"):
        sp.router_saturation(a, other_e)
    other_tokens = Trace.from_sequences(
        [np.array([[0, 1], [2, 3]])], num_experts=4, token_ids=np.array([1, 2])
    )
    with pytest.raises(InvalidParameterError, match="same tokens"):
        sp.router_saturation(a, other_tokens)
    shorter = Trace.from_sequences([np.array([[0, 1]])], num_experts=4)
    with pytest.raises(RoutescopeError):
        sp.router_saturation(a, shorter)


def test_empty_trace_is_a_clear_error() -> None:
    empty = tiny().select_tokens(np.zeros(5, dtype=bool))
    with pytest.raises(InvalidParameterError, match="no tokens"):
        sp.expert_load(empty)


def test_heatmaps_show_the_numbers() -> None:
    from routescope.analysis import figures_experts as fx

    tr = random_trace(3)
    load = sp.expert_load(tr)
    z = np.asarray(fx.load_heatmap(load).data[0].z, dtype=float)
    for layer, expert, share in zip(load["layer"], load["expert"], load["share"], strict=True):
        assert z[layer, expert] == pytest.approx(share)
    dom = sp.domain_specialization(tr)
    fig = fx.domain_heatmap(dom, layer=1)
    assert list(fig.data[0].y) == ["x", "y", "z"]
    zz = np.asarray(fig.data[0].z, dtype=float)
    assert zz[1, 4] == pytest.approx(get(dom, label="y", layer=1, expert=4)["ratio_uniform"])
    co = sp.coactivation(tr, 0)
    zc = np.asarray(fx.coactivation_heatmap(co).data[0].z, dtype=float)
    assert np.isnan(np.diag(zc)).all()
    assert zc[0, 1] == pytest.approx(get(co, expert_i=0, expert_j=1)["rate"] or np.nan, nan_ok=True)
