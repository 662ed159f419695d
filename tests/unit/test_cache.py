"""Expert-cache hit rates: hand-computed cases and property tests against plain simulators."""

from __future__ import annotations

from collections import Counter

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routescope.analysis.cache import belady_hit_rates, cache_hit_rates, lru_hit_rates
from routescope.analysis.consistency import sch
from routescope.core.errors import InvalidParameterError
from routescope.core.trace import Trace

INF = float("inf")
ALL_POLICIES = ["lru", "lfu", "fifo", "static", "lookahead-2", "belady", "belady-bypass"]


# ---- a plain reference: one capacity at a time, lists and linear scans ---------------------------
def ref_hits(seq: list[list[int]], C: int, policy: str, service: str, start: str) -> int:
    """Hits of `policy` with C slots on one sequence (rows = a token's requests in rank order)."""
    if policy == "static":
        counts = Counter(e for row in seq for e in row)
        return sum(sorted(counts.values(), reverse=True)[:C])
    window = int(policy.split("-")[1]) if policy.startswith("lookahead") else 0
    flat = [(t, j, e) for t, row in enumerate(seq) for j, e in enumerate(row)]

    def next_use(x: int, t: int, j: int) -> float:
        later = [tt * 1000 + jj for tt, jj, e in flat if e == x and (tt, jj) > (t, j)]
        return min(later) if later else INF

    first_seen: list[int] = []
    for row in seq:
        first_seen += [e for e in row if e not in first_seen]
    warm = set(first_seen[:C]) if start == "warm" else set()
    seen: set[int] = set()
    cache: list[int] = []  # in admission order
    last: dict[int, int] = {}
    count: Counter = Counter()
    hits = 0

    def priority(x: int, t: int, j: int, served: set[int]) -> tuple:
        if policy == "lru":
            return (last[x],)
        if policy == "lfu":
            return (count[x], last[x])
        if policy.startswith("lookahead"):
            n = sum(1 for tt in range(t, min(t + window, len(seq))) if x in seq[tt])
            return (n - (x in served), last[x])
        return (-next_use(x, t, 10**6 if service == "simultaneous" else j),)

    def admit(e: int, t: int, j: int, row: list[int], served: set[int]) -> None:
        if len(cache) < C:
            cache.append(e)
            return
        candidates = [x for x in cache if not (service == "simultaneous" and x in row)]
        if policy == "fifo":
            victim = candidates[0]
        else:
            pool = candidates + ([e] if policy == "belady-bypass" else [])
            victim = min(pool, key=lambda x: priority(x, t, j, served))
            if victim == e:
                return
        cache.remove(victim)
        cache.append(e)

    for t, row in enumerate(seq):
        if service == "stream":
            for j, e in enumerate(row):
                last[e], count[e] = t * 1000 + j, count[e] + 1
                first = e not in seen
                seen.add(e)
                if e in cache or (first and e in warm):
                    hits += 1
                if e not in cache:
                    admit(e, t, j, row, set(row[: j + 1]))
        elif service == "token":  # hits against the cache before the token, then as stream
            before = set(cache)
            for e in row:
                first = e not in seen
                seen.add(e)
                hits += e in before or (first and e in warm)
            for j, e in enumerate(row):
                last[e], count[e] = t * 1000 + j, count[e] + 1
                if e not in cache:
                    admit(e, t, j, row, set(row[: j + 1]))
        else:  # simultaneous: the whole token is served at once; its experts are not evictable
            before = set(cache)
            for j, e in enumerate(row):
                first = e not in seen
                seen.add(e)
                hits += e in before or (first and e in warm)
                last[e], count[e] = t * 1000 + j, count[e] + 1
            for j, e in enumerate(row):
                if e not in cache:
                    admit(e, t, j, row, set(row))
    return hits


def one_seq(rows: list[list[int]], E: int) -> Trace:
    return Trace.from_sequences([np.asarray(rows)], num_experts=E)


def rate(df: pl.DataFrame, policy: str, C: int, layer: int | None = 0) -> float:
    sel = df.filter((pl.col("policy") == policy) & (pl.col("capacity") == C))
    sel = sel.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer)
    assert sel.height == 1
    return sel["hit_rate"][0]


# ---- hand-computed cases --------------------------------------------------------------------------
def test_lru_and_belady_differ_on_cyclic_stream():
    # 0,1,2,0,1,2 with C=2: LRU always evicts the next one needed (0 hits); Belady keeps 0 at t=2
    # (0 is needed at t=3, 1 at t=4) and keeps 2 at t=4 (0 is never needed again): 2 hits.
    tr = one_seq([[0], [1], [2], [0], [1], [2]], E=3)
    df = cache_hit_rates(tr, policies=["lru", "belady", "fifo"], capacities=[2], phase="all")
    assert rate(df, "lru", 2) == 0.0
    assert rate(df, "fifo", 2) == 0.0
    assert rate(df, "belady", 2) == pytest.approx(2 / 6)
    assert rate(belady_hit_rates(tr, capacities=[2]), "belady", 2) == pytest.approx(2 / 6)
    assert rate(lru_hit_rates(tr, capacities=[2]), "lru", 2) == 0.0


def test_lfu_fifo_static_lookahead_bypass_by_hand():
    # 0,0,1,2,0 C=2. LRU at t=3 evicts 0 (used at t=1, 1 at t=2) -> 1 hit. LFU evicts 1 (count 1
    # against 2) -> 0 hits at t=4 too: 2 hits.
    tr = one_seq([[0], [0], [1], [2], [0]], E=3)
    df = cache_hit_rates(tr, policies=["lru", "lfu"], capacities=[2], phase="all")
    assert rate(df, "lru", 2) == pytest.approx(1 / 5)
    assert rate(df, "lfu", 2) == pytest.approx(2 / 5)
    # 0,1,0,2,0 C=2: LRU evicts 1 at t=3 (2 hits); FIFO evicts 0, the oldest admitted (1 hit);
    # static C=1 keeps 0 (3 of 5 requests).
    tr = one_seq([[0], [1], [0], [2], [0]], E=3)
    df = cache_hit_rates(tr, policies=["lru", "fifo", "static"], capacities=[1, 2], phase="all")
    assert rate(df, "lru", 2) == pytest.approx(2 / 5)
    assert rate(df, "fifo", 2) == pytest.approx(1 / 5)
    assert rate(df, "static", 1) == pytest.approx(3 / 5)
    # 0,1,2,0,1 C=2. lookahead-1 sees only the current token: ties -> LRU, 0 hits. lookahead-2
    # sees t=3 (needs 0) at t=2 and evicts 1, then hits 0: 1 hit, as Belady. Bypass declines to
    # admit 2 (never needed again) and hits 0 and 1: 2 hits.
    tr = one_seq([[0], [1], [2], [0], [1]], E=3)
    pols = ["lookahead-1", "lookahead-2", "belady", "belady-bypass"]
    df = cache_hit_rates(tr, policies=pols, capacities=[2], phase="all")
    assert rate(df, "lookahead-1", 2) == 0.0
    assert rate(df, "lookahead-2", 2) == pytest.approx(1 / 5)
    assert rate(df, "belady", 2) == pytest.approx(1 / 5)
    assert rate(df, "belady-bypass", 2) == pytest.approx(2 / 5)


def test_three_service_models_differ_by_hand():
    # FIFO, E=4, k=2, C=2; tokens t0 [1,0]  t1 [1,3]  t2 [2,1]  t3 [0,2]
    # stream: 1m 0m | 1h 3m(evict 1) | 2m(evict 0) 1m(evict 3) | 0m(evict 2) 2m(evict 1) -> 1
    # token:  t1: 1 was resident before the token: hit; 3 evicts 1 | t2: cache {0,3}: no hit;
    #         2 evicts 0, 1 evicts 3 | t3: cache {2,1}: 2 hits; 0 evicts 2, 2 re-admitted -> 2
    # simultaneous: t1: 1 hit, 3 may not evict 1 (requested now): evicts 0 | t2: 1 hit, 2 evicts
    #         3 | t3: 2 hit, 0 evicts 1 -> 3
    tr = one_seq([[1, 0], [1, 3], [2, 1], [0, 2]], E=4)
    got = {
        s: rate(cache_hit_rates(tr, ["fifo"], [2], service=s, phase="all"), "fifo", 2)
        for s in ("stream", "token", "simultaneous")
    }
    assert got == pytest.approx({"stream": 1 / 8, "token": 2 / 8, "simultaneous": 3 / 8})
    # Belady, E=4, k=2, C=3; requests (flattened index): t0 [0,1] (0,1)  t1 [3,2] (2,3)
    # t2 [1,0] (4,5)  t3 [3,2] (6,7)  t4 [1,0] (8,9)
    # stream: at 2 evict 3 (next at 6 is farthest); 1,0 hit; at 3 evict 0 (next 9); 2,1 hit;
    #         0 misses -> 4. token keeps stream's cache states and counts t2: 2, t3: 1, t4: 1 -> 4.
    # simultaneous: t1 cannot evict 3, evicts 0; t2 1 hits, 0 evicts 2; t3 3 hits, 2 evicts 0;
    #         t4 1 hits -> 3.
    tr = one_seq([[0, 1], [3, 2], [1, 0], [3, 2], [1, 0]], E=4)
    got = {
        s: rate(cache_hit_rates(tr, ["belady"], [3], service=s, phase="all"), "belady", 3)
        for s in ("stream", "token", "simultaneous")
    }
    assert got == pytest.approx({"stream": 4 / 10, "token": 4 / 10, "simultaneous": 3 / 10})
    # simultaneous needs room for a whole token: C < k is null
    df = cache_hit_rates(tr, ["lru"], [1, 2], service="simultaneous", phase="all")
    assert rate(df, "lru", 1) is None and rate(df, "lru", 2) is not None


def test_warm_start_counts_first_c_distinct():
    # 0,1,2,0 C=2 LRU cold: 0 hits. Warm: first requests of 0 and 1 count -> 2 of 4.
    tr = one_seq([[0], [1], [2], [0]], E=3)
    df = cache_hit_rates(tr, ["lru", "static"], [2], start="warm", phase="all")
    assert rate(df, "lru", 2) == pytest.approx(2 / 4)
    assert rate(df, "static", 2) == pytest.approx(3 / 4)  # static is always preloaded


def test_step_granularity_by_hand():
    # batch of 2 sequences, k=1: steps are positions: {0}, {1,2}, {0,1} (rank, then sequence order)
    # stream LRU C=3: 0m 1m 2m 0h 1h -> 2 of 5. C=2: 0m 1m 2m(evict 0) 0m(evict 1) 1m -> 0.
    tr = Trace.from_sequences([np.array([[0], [1], [0]]), np.array([[0], [2], [1]])], 3)
    df = cache_hit_rates(tr, ["lru"], [2, 3], granularity="step", batch_size=2, phase="all")
    assert rate(df, "lru", 3) == pytest.approx(2 / 5)
    assert rate(df, "lru", 2) == 0.0
    # per token, each sequence is its own stream: 0,1,0 hits once; 0,2,1 never -> 1 of 6
    df = cache_hit_rates(tr, ["lru"], [3], phase="all")
    assert rate(df, "lru", 3) == pytest.approx(1 / 6)


def test_global_scope_and_pooled_rows():
    # two layers, k=1. layer 0: 0,1,0 ; layer 1: 2,2,2. Global stream: (0,0) (1,2) (0,1) (1,2)
    # (0,0) (1,2); with C=1 per layer -> 2 slots, LRU: items a=(0,0) b=(1,2) c=(0,1):
    # a m, b m, c m (evict a), b h, a m (evict c), b h -> 2 of 6.
    tr = Trace.from_sequences([np.array([[[0], [2]], [[1], [2]], [[0], [2]]])], 3)
    g = cache_hit_rates(tr, ["lru"], [1], scope="global", phase="all")
    assert g["slots"].to_list() == [2] and g["layer"].to_list() == [None]
    assert g["hit_rate"][0] == pytest.approx(2 / 6)
    per = cache_hit_rates(tr, ["lru"], [1], phase="all")
    assert rate(per, "lru", 1, 0) == 0.0
    assert rate(per, "lru", 1, 1) == pytest.approx(2 / 3)
    assert rate(per, "lru", 1, None) == pytest.approx(2 / 6)  # pooled: all hits / all requests


def test_phases_are_reported_apart():
    rows = np.array([[0], [1], [0], [1], [1]])
    phase = np.array([0, 0, 0, 1, 1], dtype=np.uint8)
    tr = Trace.from_sequences([rows], 2, phase=phase)
    df = cache_hit_rates(tr, ["lru"], [1])
    assert sorted(set(df["phase"])) == ["decode", "prefill"]
    assert rate(df.filter(pl.col("phase") == "prefill"), "lru", 1) == 0.0
    assert rate(df.filter(pl.col("phase") == "decode"), "lru", 1) == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacities": [0]},
        {"capacities": [4]},
        {"policies": ["mru"]},
        {"policies": ["lookahead-0"]},
        {"service": "batch"},
        {"start": "hot"},
        {"scope": "model"},
        {"phase": "train"},
        {"service": "simultaneous", "policies": ["belady-bypass"]},
    ],
)
def test_invalid_parameters_raise_one_line(kwargs):
    tr = one_seq([[0], [1]], E=3)
    with pytest.raises(InvalidParameterError) as err:
        cache_hit_rates(tr, **kwargs)
    assert "\n" not in str(err.value)


# ---- property tests -------------------------------------------------------------------------------
@st.composite
def traces(draw, equal_lengths: bool = False, max_len: int = 9):
    E = draw(st.integers(2, 6))
    k = draw(st.integers(1, min(3, E)))
    n_layers = draw(st.integers(1, 2))
    n_seq = draw(st.integers(1, 3))
    lengths = (
        [draw(st.integers(1, max_len))] * n_seq
        if equal_lengths
        else [draw(st.integers(1, max_len)) for _ in range(n_seq)]
    )
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    hot = draw(st.integers(1, E))  # a narrow expert range makes repeats (locality) likely
    seqs = []
    for T in lengths:
        arr = np.empty((T, n_layers, k), dtype=np.int64)
        for t in range(T):
            for layer in range(n_layers):
                pool = E if rng.random() < 0.3 or hot < k else hot
                arr[t, layer] = rng.choice(pool, k, replace=False)
        seqs.append(arr)
    return Trace.from_sequences(seqs, num_experts=E)


def per_layer_hits(df: pl.DataFrame, policy: str, layer: int) -> dict[int, int]:
    sel = df.filter((pl.col("policy") == policy) & (pl.col("layer") == layer))
    return dict(zip(sel["capacity"].to_list(), sel["hits"].to_list(), strict=True))


def sequences_of(tr: Trace, layer: int) -> list[list[list[int]]]:
    o = tr.seq_offsets
    return [tr.experts[o[s] : o[s + 1], layer, :].tolist() for s in range(tr.num_sequences)]


PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(
    tr=traces(),
    service=st.sampled_from(["stream", "token", "simultaneous"]),
    start=st.sampled_from(["cold", "warm"]),
)
def test_every_policy_matches_the_plain_simulator(tr, service, start):
    pols = [p for p in ALL_POLICIES if not (service == "simultaneous" and p == "belady-bypass")]
    df = cache_hit_rates(tr, pols, service=service, start=start, phase="all")
    for layer in range(tr.num_layers):
        seqs = sequences_of(tr, layer)
        for pol in pols:
            got = per_layer_hits(df, pol, layer)
            for C in range(1, tr.num_experts + 1):
                if service == "simultaneous" and tr.top_k > C:
                    continue  # a token's experts do not fit together: reported as null
                want = sum(ref_hits(s, C, pol, service, start) for s in seqs)
                assert got[C] == want, (pol, C)


@PROP
@given(tr=traces(), start=st.sampled_from(["cold", "warm"]))
def test_global_scope_matches_the_plain_simulator(tr, start):
    E, nl = tr.num_experts, tr.num_layers
    df = cache_hit_rates(tr, ["lru", "belady", "fifo"], scope="global", start=start, phase="all")
    o = tr.seq_offsets
    seqs = [
        [
            [layer * E + int(e) for e in tr.experts[t, layer]]
            for t in range(o[s], o[s + 1])
            for layer in range(nl)
        ]
        for s in range(tr.num_sequences)
    ]
    for pol in ["lru", "belady", "fifo"]:
        sel = df.filter(pl.col("policy") == pol)
        for C, hits in zip(sel["capacity"], sel["hits"], strict=True):
            assert hits == sum(ref_hits(s, C * nl, pol, "stream", start) for s in seqs)


@PROP
@given(
    tr=traces(max_len=14),
    service=st.sampled_from(["stream", "simultaneous"]),
    start=st.sampled_from(["cold", "warm"]),
)
def test_belady_bounds_every_admitting_policy(tr, service, start):
    pols = ["lru", "lfu", "fifo", "lookahead-1", "lookahead-3", "belady"]
    if service == "stream":
        pols.append("belady-bypass")
    df = cache_hit_rates(tr, pols, service=service, start=start, phase="all").drop_nulls("hit_rate")
    wide = df.pivot(on="policy", index=["layer", "capacity"], values="hits")
    for pol in pols[:-1] if service == "stream" else pols:
        assert (wide["belady"] >= wide[pol]).all(), pol
    if service == "stream":
        assert (wide["belady-bypass"] >= wide["belady"]).all()


@PROP
@given(
    tr=traces(),
    service=st.sampled_from(["stream", "token", "simultaneous"]),
    start=st.sampled_from(["cold", "warm"]),
)
def test_lru_and_belady_non_decreasing_in_capacity(tr, service, start):
    df = cache_hit_rates(tr, ["lru", "belady"], service=service, start=start, phase="all")
    df = df.drop_nulls("hit_rate").sort("capacity")
    for (_, _), grp in df.group_by(["policy", "layer"]):
        assert (np.diff(grp["hits"].to_numpy()) >= 0).all()


@PROP
@given(tr=traces(), service=st.sampled_from(["stream", "token", "simultaneous"]))
def test_full_capacity_warm_start_hits_everything(tr, service):
    pols = [p for p in ALL_POLICIES if not (service == "simultaneous" and p == "belady-bypass")]
    df = cache_hit_rates(tr, pols, [tr.num_experts], service=service, start="warm", phase="all")
    assert df["hit_rate"].to_list() == pytest.approx([1.0] * df.height)


@PROP
@given(tr=traces(equal_lengths=True))
def test_static_equals_segment_oracle_over_whole_sequence(tr):
    T = int(tr.seq_lengths[0])
    st_df = cache_hit_rates(tr, ["static"], phase="all").sort("layer", "capacity", nulls_last=True)
    orc = sch(tr, [T]).sort("layer", "capacity", nulls_last=True)
    assert st_df["hit_rate"].to_list() == pytest.approx(orc["hit_rate"].to_list())
