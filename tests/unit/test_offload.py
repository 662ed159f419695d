"""The offloading what-if: hand-computed times on small traces, the invariants of DESIGN §9 as
property tests (infinite bandwidth → compute bound; m = 0 → the cache-only result of
`cache_hit_rates`; the oracle with enough lead and bandwidth never stalls; LRU is never slower
with more memory), costs from a model config, streaming exactness and clear errors."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routescope.analysis import offload as ol
from routescope.analysis import prefetch as pf
from routescope.analysis.cache import cache_hit_rates
from routescope.core.errors import InvalidParameterError
from routescope.core.trace import Trace

MS = 1_000_000_000  # picoseconds per millisecond


def cost(load_ms: float = 2.0, layer_ms: float | tuple = 1.0, other_ms: float = 0.0, **kw):
    """A cost whose expert load takes `load_ms` (1 MB over 1 MB/ms = 1 GB/s)."""
    return ol.OffloadCost(
        expert_bytes=int(load_ms * 1e6),
        layer_ms=layer_ms,
        bandwidth_gbps=1.0,
        other_ms=other_ms,
        **kw,
    )


def X_of(rows) -> tuple[np.ndarray, np.ndarray]:
    """One sequence: rows[t][l] = experts of token t at layer l."""
    X = np.array(rows, dtype=np.int32)
    return X, np.array([0, len(X)], dtype=np.int64)


# ---- hand-computed ---------------------------------------------------------------------------------
def test_cache_only_times_by_hand():
    X, off = X_of([[[0]], [[1]], [[0]]])  # one layer, k = 1
    # C = 1: three misses, each 2 ms of stall before 1 ms of compute
    one = ol.simulate_stream(X, off, 2, "lru", 1, cost())
    assert one["time_ps"] == 9 * MS and one["stall_ps"] == 6 * MS
    assert (one["requests"], one["hits"], one["demand_loads"]) == (3, 0, 3)
    # C = 2: the third token hits
    two = ol.simulate_stream(X, off, 2, "lru", 2, cost())
    assert two["time_ps"] == 7 * MS and two["hits"] == 1
    # other_ms is added once per token
    assert ol.simulate_stream(X, off, 2, "lru", 2, cost(other_ms=0.5))["time_ps"] == 8.5 * MS


def test_oracle_prefetch_one_layer_ahead_by_hand():
    # two layers, k = 1; token 0 uses 0 then 1, token 1 uses 2 then 3; C = 1, lead 1
    X, off = X_of([[[0], [1]], [[2], [3]]])
    got = ol.simulate_stream(X, off, 4, "lru", 1, cost(), predictions=X, width=1, lead=1)
    # step 0: expert 0 prefetched at t=0 (it has no earlier layer), arrives at 2: stall 2; the
    #   prefetch of step 1 starts at 2, arrives at 4; compute until 3
    # step 1: waits for 4 (stall 1), prefetch of step 2 4 -> 6, compute until 5
    # step 2: stall 1, prefetch 6 -> 8, compute until 7; step 3: stall 1, compute until 9
    assert got["time_ps"] == 9 * MS and got["stall_ps"] == 5 * MS
    assert (got["hits"], got["demand_loads"], got["prefetch_loads"]) == (4, 0, 4)
    assert got["useful_prefetches"] == 4 and got["prefetch_issued"] == 4
    # without prefetch: four misses, 2 ms each, nothing overlaps
    assert ol.simulate_stream(X, off, 4, "lru", 1, cost())["time_ps"] == 12 * MS
    # a link 4x faster: only the first load stalls (0.5 ms)
    fast = ol.simulate_stream(X, off, 4, "lru", 1, cost(0.5), predictions=X, width=1, lead=1)
    assert fast["time_ps"] == int(4.5 * MS) and fast["stall_ps"] == int(0.5 * MS)


def test_same_token_prefetch_never_reaches_into_the_previous_token():
    # three layers, two tokens; speculative-style predictions are right, but none for layer 0
    X, off = X_of([[[0], [1], [2]], [[3], [4], [5]]])
    P = X.copy()
    P[:, 0] = -1
    same = ol.simulate_stream(
        X, off, 6, "lru", 1, cost(), predictions=P, width=1, lead=1, same_token=True
    )
    # token 0: layer 0 on demand (stall 2), layer 1 prefetched at 2 -> 4 (stall 1), layer 2
    # prefetched at 4 -> 6 (stall 1): 7 ms; token 1 the same: 14 ms in all
    assert same["time_ps"] == 14 * MS and same["stall_ps"] == 8 * MS
    assert (same["demand_loads"], same["prefetch_loads"]) == (2, 4)
    # the same predictions issued across tokens (not same-token): layer 0 of token 1 is
    # prefetched during layer 2 of token 0 (P says -1 there, so nothing changes) -> equal
    cross = ol.simulate_stream(X, off, 6, "lru", 1, cost(), predictions=P, width=1, lead=1)
    assert cross == same
    # lead 2 for same-token predictions: layers 0 and 1 are issued at the token's start
    lead2 = ol.simulate_stream(
        X, off, 6, "lru", 1, cost(), predictions=P, width=1, lead=2, same_token=True
    )
    # token 0: at 0 prefetch layer 1's expert (0 -> 2), then layer 0 on demand (2 -> 4): stall 4;
    # layer 2's prefetch issued at 4 (4 -> 6); compute to 5; layer 1 ready (2): compute to 6;
    # layer 2 ready at 6: compute to 7. Token 1 repeats from 7: 14 ms.
    assert lead2["time_ps"] == 14 * MS and lead2["stall_ps"] == 8 * MS


def test_prefetch_waits_behind_the_link_and_wasted_prefetches_cost():
    # one layer, k = 1, a wrong prediction (expert 3) for every token, C = 2, lead 1
    X, off = X_of([[[0]], [[1]], [[2]]])
    P = np.full((3, 1, 1), 3, dtype=np.int32)
    got = ol.simulate_stream(X, off, 4, "lru", 2, cost(), predictions=P, width=1, lead=1)
    # step 0: prefetch (3) issued first (no earlier layer): link 0 -> 2; demand 0 waits behind
    #   it: 2 -> 4 (stall 4); prefetch for token 1 (3, resident: touch only); compute -> 5
    # step 1: demand 1 misses, evicts 0 (3 is pinned until step 1 starts, then touched last):
    #   5 -> 7 (stall 2), compute -> 8; prefetch 3 resident again
    # step 2: demand 2 evicts 1: 8 -> 10, compute -> 11
    assert got["time_ps"] == 11 * MS
    assert (got["prefetch_loads"], got["prefetch_issued"], got["useful_prefetches"]) == (1, 3, 0)


def test_prefetched_top_rank_is_the_most_recent():
    # C = m = 2: the prefetch of token 1 fills the cache with [0, 1] (rank order); token 1 then
    # needs 2, whose load evicts the least recent of the two: the lower-ranked 1, so token 2's
    # request for the top-ranked 0 hits
    X, off = X_of([[[3]], [[2]], [[0]]])
    P = np.full((3, 1, 2), -1, dtype=np.int32)
    P[1, 0] = [0, 1]
    got = ol.simulate_stream(X, off, 4, "lru", 2, cost(), predictions=P, width=2, lead=1)
    assert (got["hits"], got["prefetch_loads"], got["demand_loads"]) == (1, 2, 2)
    # the top-ranked prediction goes first on the link: token 1 needs 0, loaded 2 -> 4
    X, off = X_of([[[3]], [[0]]])
    P = np.full((2, 1, 2), -1, dtype=np.int32)
    P[1, 0] = [0, 1]
    got = ol.simulate_stream(X, off, 4, "lru", 2, cost(), predictions=P, width=2, lead=1)
    assert got["time_ps"] == 5 * MS and got["stall_ps"] == 3 * MS


def test_offload_frame_rows_limits_and_memory():
    X = [[[0, 1], [2, 3]], [[1, 2], [3, 0]], [[0, 3], [1, 2]]]
    tr = Trace.from_sequences([np.array(X, dtype=np.int16)], 4)
    c = ol.OffloadCost(
        expert_bytes=2_000_000, layer_ms=1.0, nonexpert_bytes=1_000_000_000, bandwidth_gbps=1.0
    )
    df = ol.offload_whatif(
        tr, c, policies=["lru"], predictors=["oracle"], widths=[2], capacities=[1, 2, 4]
    )
    sim = df.filter(pl.col("kind") == "simulated")
    # cache-only at every capacity, prefetch only where C >= m
    assert sim.select("predictor", "capacity").rows() == [
        ("none", 1),
        ("none", 2),
        ("none", 4),
        ("oracle", 2),
        ("oracle", 4),
    ]
    lim = {r["policy"]: r for r in df.filter(pl.col("kind") == "limit").to_dicts()}
    assert lim["all-resident"]["time_s"] == pytest.approx(3 * 2e-3)
    assert lim["all-resident"]["memory_gb"] == pytest.approx(1 + 4 * 2 * 0.002)
    # no cache: 12 requests x 2 ms on top of compute
    assert lim["no-cache"]["time_s"] == pytest.approx(6e-3 + 12 * 2e-3)
    assert lim["no-cache"]["memory_gb"] == pytest.approx(1.0)
    row = sim.filter((pl.col("predictor") == "none") & (pl.col("capacity") == 2)).to_dicts()[0]
    assert row["memory_gb"] == pytest.approx(1 + 2 * 2 * 0.002)
    assert row["tokens_per_s"] == pytest.approx(3 / row["time_s"])
    assert row["compute_s"] + row["stall_s"] == pytest.approx(row["time_s"])
    # every simulated point lies between the limits
    assert (sim["time_s"] >= lim["all-resident"]["time_s"] - 1e-12).all()


# ---- invariants (property tests) -------------------------------------------------------------------
@st.composite
def streams(draw, max_e=6, max_k=2, max_l=3, max_t=6):
    """(X int32[N, L, k] with distinct experts per row, offsets, E, k, L)."""
    E = draw(st.integers(2, max_e))
    k = draw(st.integers(1, min(max_k, E)))
    L = draw(st.integers(1, max_l))
    n_seq = draw(st.integers(1, 3))
    seqs = []
    for _ in range(n_seq):
        T = draw(st.integers(1, max_t))
        seqs.append([[draw(st.permutations(range(E)))[:k] for _ in range(L)] for _ in range(T)])
    X = np.array([row for s in seqs for row in s], dtype=np.int32)
    offsets = np.r_[0, np.cumsum([len(s) for s in seqs])].astype(np.int64)
    return X, offsets, E, k, L


POLICIES = ["lru", "lfu", "fifo", "lookahead-2", "belady"]
settings_ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def predictions(draw, X, E, width):
    """Arbitrary rankings (right, wrong, missing) of `width` distinct experts per row."""
    n, L, _ = X.shape
    P = np.full((n, L, width), -1, dtype=np.int32)
    for t in range(n):
        for lay in range(L):
            if draw(st.booleans()):
                perm = draw(st.permutations(range(E)))
                P[t, lay, : min(width, E)] = perm[: min(width, E)]
    return P


@settings_
@given(data=st.data(), s=streams(), policy=st.sampled_from(POLICIES))
def test_infinite_bandwidth_is_compute_bound(data, s, policy):
    X, off, E, k, L = s
    m = data.draw(st.integers(0, E))
    C = data.draw(st.integers(max(1, m), E))
    lead = data.draw(st.integers(1, L))
    P = predictions(data.draw, X, E, max(m, 1))
    layer_ms = tuple(data.draw(st.sampled_from([0.5, 1.0, 3.0])) for _ in range(L))
    c = ol.OffloadCost(
        expert_bytes=10**9, layer_ms=layer_ms, bandwidth_gbps=float("inf"), other_ms=0.25
    )
    got = ol.simulate_stream(X, off, E, policy, C, c, predictions=P, width=m, lead=lead)
    assert got["stall_ps"] == 0
    assert got["time_ps"] == len(X) * (int(c.layer_ps(L).sum()) + c.other_ps)


@settings_
@given(
    s=streams(),
    policy=st.sampled_from(POLICIES),
    load=st.sampled_from([0.0, 0.5, 2.0]),
    start=st.sampled_from(["cold", "warm"]),
)
def test_no_prefetch_is_the_cache_only_result(s, policy, load, start):
    X, off, E, k, L = s
    tr = Trace(
        experts=X.astype(np.int16), weights=None, seq_offsets=off, num_experts=E, top_k=k,
        layers=tuple(range(L)),
    )  # fmt: skip
    for C in range(1, E + 1):
        got = ol.simulate_stream(X, off, E, policy, C, cost(load), start=start)
        ref = cache_hit_rates(
            tr, policies=[policy], capacities=[C], service="stream", start=start, phase="all"
        ).filter(pl.col("layer").is_null())
        assert got["hits"] == ref["hits"][0], (policy, C)
        misses = got["requests"] - got["hits"]
        assert got["demand_loads"] == misses and got["prefetch_issued"] == 0
        # nothing overlaps: every miss stalls its full load time
        assert got["stall_ps"] == misses * int(round(load * MS))
        assert got["time_ps"] == len(X) * L * MS + got["stall_ps"]


@settings_
@given(data=st.data(), s=streams(), policy=st.sampled_from(POLICIES))
def test_oracle_with_enough_lead_and_bandwidth_never_stalls(data, s, policy):
    X, off, E, k, L = s
    lead = data.draw(st.integers(1, L))
    C = data.draw(st.integers(k, E))
    # k loads fit in the shortest layer's compute
    c = ol.OffloadCost(expert_bytes=1_000_000, layer_ms=float(k), bandwidth_gbps=1.0)
    got = ol.simulate_stream(X, off, E, policy, C, c, predictions=X, width=k, lead=lead)
    assert got["hits"] == got["requests"] and got["demand_loads"] == 0
    # the only stall: each stream's very first layer, which nothing precedes
    first = sum(int((X[off[i], 0] >= 0).sum()) for i in range(len(off) - 1) if off[i + 1] > off[i])
    assert got["stall_ps"] == first * c.load_ps
    # warm: the first token's experts are preloaded, so nothing stalls at all
    warm = ol.simulate_stream(
        X, off, E, policy, C, c, predictions=X, width=k, lead=lead, start="warm"
    )
    assert warm["stall_ps"] == 0 and warm["time_ps"] == len(X) * L * c.layer_ps(L)[0]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    s=streams(max_e=6, max_k=3, max_t=14),
    same=st.booleans(),
    start=st.sampled_from(["cold", "warm"]),
)
def test_lru_is_never_slower_with_more_memory(data, s, same, start):
    X, off, E, k, L = s
    m = data.draw(st.integers(0, E))
    lead = data.draw(st.integers(1, L))
    P = predictions(data.draw, X, E, max(m, 1))
    load = data.draw(st.sampled_from([0.1, 1.0, 3.0]))
    layer_ms = tuple(data.draw(st.sampled_from([0.2, 1.0, 2.0])) for _ in range(L))
    c = cost(load, layer_ms)
    times = [
        ol.simulate_stream(
            X,
            off,
            E,
            "lru",
            C,
            c,
            predictions=P,
            width=m,
            lead=lead,
            same_token=same,
            start=start,
        )["time_ps"]
        for C in range(max(1, m), E + 1)
    ]
    assert times == sorted(times, reverse=True)


def test_warm_start_preloads_in_first_use_order():
    """Warm: the first C distinct experts are resident at no cost, admitted (for FIFO) in the
    order a cold cache would have admitted them."""
    X, off = X_of([[[0]], [[1]], [[2]], [[0]]])
    fifo = ol.simulate_stream(X, off, 3, "fifo", 2, cost(), start="warm")
    # 0 and 1 hit; 2 evicts the first admitted (0), so 0 misses again: 2 hits, 2 loads
    assert (fifo["hits"], fifo["demand_loads"]) == (2, 2)
    assert fifo["time_ps"] == 4 * MS + 2 * 2 * MS
    lru = ol.simulate_stream(X, off, 3, "lru", 2, cost(), start="warm")
    assert (lru["hits"], lru["demand_loads"]) == (2, 2)  # 2 evicts 0, the least recent
    cold = ol.simulate_stream(X, off, 3, "fifo", 2, cost())
    assert cold["hits"] + 2 == fifo["hits"]


def test_fifo_can_be_slower_with_more_memory():
    """Belady's anomaly: what the LRU property rules out does happen to FIFO."""
    refs = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
    X, off = X_of([[[e]] for e in refs])
    t3, t4 = (ol.simulate_stream(X, off, 6, "fifo", c, cost())["time_ps"] for c in (3, 4))
    assert t4 > t3
    l3, l4 = (ol.simulate_stream(X, off, 6, "lru", c, cost())["time_ps"] for c in (3, 4))
    assert l4 <= l3


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=streams(), max_rows=st.integers(1, 30))
def test_results_do_not_depend_on_chunking(s, max_rows):
    X, off, E, k, L = s
    rng = np.random.default_rng(len(X))
    tr = Trace(
        experts=X.astype(np.int16), weights=None, seq_offsets=off, num_experts=E, top_k=k,
        layers=tuple(range(L)), phase=(rng.random(len(X)) < 0.5).astype(np.uint8),
    )  # fmt: skip
    kw = dict(policies=["lru", "belady"], predictors=["previous-token", "oracle"], widths=[k])
    whole = ol.offload_whatif(tr, cost(), **kw)
    cut = ol.offload_whatif(tr, cost(), max_rows=max_rows, **kw)
    assert whole.equals(cut)


# ---- costs -----------------------------------------------------------------------------------------
OLMOE = {
    "model_type": "olmoe",
    "hidden_size": 2048,
    "intermediate_size": 1024,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "num_experts": 64,
    "num_experts_per_tok": 8,
    "vocab_size": 50304,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def test_costs_from_a_model_config():
    c = ol.model_cost(OLMOE, 16, 8, 64, tflops=1.0)
    assert c.expert_bytes == 3 * 2048 * 1024 * 2  # 12.6 MB
    attn = 4 * 2048 * 2048
    active = attn + 2048 * 64 + 8 * 3 * 2048 * 1024
    assert c.layer_ms == pytest.approx(2 * active / 1e12 * 1e3)
    assert c.other_ms == pytest.approx(2 * 50304 * 2048 / 1e12 * 1e3)  # the LM head
    assert c.nonexpert_bytes == 2 * (2 * 50304 * 2048 + 16 * attn + 16 * 2048 * 64)
    assert c.load_ps == int(round(c.expert_bytes / 25e9 * 1e12))
    assert "TFLOP/s" in c.note and "GB/s" in c.note
    # overrides
    o = ol.model_cost(OLMOE, 16, 8, 64, expert_mb=5, layer_ms=0.2, bandwidth_gbps=50)
    assert (o.expert_bytes, o.layer_ms, o.other_ms, o.bandwidth_gbps) == (5_000_000, 0.2, 0.0, 50)
    # a float32 config counts 4 bytes per parameter; DeepSeek-style keys are read
    ds = {
        "hidden_size": 7168,
        "moe_intermediate_size": 2048,
        "intermediate_size": 18432,
        "n_shared_experts": 1,
        "num_hidden_layers": 61,
        "num_attention_heads": 128,
        "vocab_size": 129280,
        "dtype": "float32",
    }
    d = ol.model_cost(ds, 58, 8, 256)
    assert d.expert_bytes == 3 * 7168 * 2048 * 4
    with pytest.raises(InvalidParameterError, match="--expert-mb and --layer-ms"):
        ol.model_cost(None, 16, 8, 64)
    with pytest.raises(InvalidParameterError, match="pass --layer-ms"):
        ol.model_cost(None, 16, 8, 64, expert_mb=12)
    with pytest.raises(InvalidParameterError, match="no hidden_size"):
        ol.model_cost({"num_hidden_layers": 2}, 2, 1, 4)


# ---- errors and predictors through the frame -------------------------------------------------------
def test_errors_are_one_clear_line():
    tr = Trace.from_sequences([np.array([[[0, 1]], [[1, 2]]], dtype=np.int16)], 4)
    with pytest.raises(InvalidParameterError, match="not simulated by the offload what-if"):
        ol.offload_whatif(tr, cost(), policies=["static"])
    with pytest.raises(InvalidParameterError, match="unknown cache policy"):
        ol.offload_whatif(tr, cost(), policies=["mru"])
    with pytest.raises(InvalidParameterError, match="--speculative D"):
        ol.offload_whatif(tr, cost(), predictors=["speculative-1"])
    with pytest.raises(InvalidParameterError, match="capacity 5 is outside 1..4"):
        ol.offload_whatif(tr, cost(), capacities=[5])
    with pytest.raises(InvalidParameterError, match="lead 2 must lie in 1..1"):
        ol.offload_whatif(tr, cost(), lead=2)
    with pytest.raises(InvalidParameterError, match="bandwidth"):
        ol.OffloadCost(expert_bytes=1, layer_ms=1.0, bandwidth_gbps=0)


def test_speculative_and_transition_in_the_whatif():
    rng = np.random.default_rng(3)
    seqs = [
        np.stack([[rng.permutation(6)[:2] for _ in range(3)] for _ in range(8)]) for _ in range(6)
    ]
    n = 48
    spec = np.full((n, 3, 2, 4), -1, dtype=np.int16)
    X = np.concatenate(seqs)
    spec[:, 1:, 0, :2] = X[:, 1:]  # speculative-1 is exact where it exists
    tr = Trace.from_sequences(seqs, 6, speculative=spec)
    df = ol.offload_whatif(
        tr, cost(0.1), policies=["lru"], predictors=["speculative", "transition", "oracle"],
        widths=[2], capacities=[2, 6], lead=1,
    )  # fmt: skip
    sim = df.filter(pl.col("kind") == "simulated")
    assert set(sim["predictor"]) == {"none", "speculative-1", "transition-1", "oracle"}
    assert set(sim["evaluated_on"]) == {"held-out"}  # a fitted predictor: everyone held-out
    held = ~pf.is_train(np.arange(6), pf.DEFAULT_TRAIN_SPLIT)
    assert set(sim["tokens"]) == {8 * int(held.sum())}
    # speculative-1 is exact on layers 1 and 2 (none for layer 0): those always hit
    sp = sim.filter(pl.col("predictor") == "speculative-1")
    assert (sp["hits"] * 3 >= sp["requests"] * 2).all()
    assert set(sp["lead"]) == {1}
    none = sim.filter((pl.col("predictor") == "none") & (pl.col("capacity") == 2))
    assert sp.filter(pl.col("capacity") == 2)["time_s"][0] < none["time_s"][0]
