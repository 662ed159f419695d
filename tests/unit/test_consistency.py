"""Local routing consistency: repetition, SRP, SCH by hand and against brute force; the CLI."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from routescope.analysis.consistency import repetition_rates, sch, shuffled, srp
from routescope.core.errors import InvalidParameterError
from routescope.core.trace import Trace


def one_seq(rows: list[list[int]], E: int) -> Trace:
    return Trace.from_sequences([np.asarray(rows)], num_experts=E)


def pooled(df: pl.DataFrame, seg: int | None = None) -> dict:
    sel = df.filter(pl.col("layer").is_null())
    if seg is not None:
        sel = sel.filter(pl.col("segment_length") == seg)
    assert sel.height == 1
    return sel.to_dicts()[0]


# ---- hand-computed ---------------------------------------------------------------------------------
def test_srp_threshold_choice_by_hand():
    # E=4, k=1, one sequence 0,0,0,1 and L=2: windows {0,0} {0,0} {0,1}.
    # counts n_{w,e}: w1: e0=2; w2: e0=2; w3: e0=1, e1=1. A = k·L·#windows = 6.
    # c=0: P = L·E·3 = 24, TP = 6 -> F1 = 12/30 = 0.4 (the floor 2r/(1+r) = 0.4 with r = 1/4)
    # c=1: P = 2·(1+1+2) = 8, TP = 6 -> 12/14 = 0.857
    # c=2: P = 2·(1+1+0) = 4, TP = 4 -> 8/10 = 0.8
    # SRP = 12/14 at c* = 1, ĝ = P/A = 8/6.
    df = srp(one_seq([[0], [0], [0], [1]], E=4), [2], shuffled_seed=None)
    row = pooled(df, 2)
    assert row["srp"] == pytest.approx(12 / 14)
    assert row["c_star"] == 1
    assert row["g_hat"] == pytest.approx(8 / 6)
    assert row["floor"] == pytest.approx(0.4)
    assert row["windows"] == 3
    # A steadier sequence picks the stricter threshold: 0,0,0,0 L=2 -> c=2 gives TP=6, P=6: F1=1.
    row = pooled(srp(one_seq([[0], [0], [0], [0]], E=4), [2], shuffled_seed=None), 2)
    assert row["srp"] == pytest.approx(1.0)
    assert row["c_star"] == 1  # c=1 also gives P=6, TP=6: the smallest maximiser is reported


def test_srp_shorter_sequences_and_per_layer_rows():
    # Two layers; layer 1 alternates, so with L=2 its best is c=1 with F1 = 2·4/(8+4) = 2/3.
    rows = np.array([[[0], [0]], [[0], [1]], [[0], [0]]])
    tr = Trace.from_sequences([rows, rows[:1]], num_experts=2)  # the 1-token sequence: no window
    df = srp(tr, [2], shuffled_seed=None)
    per = {r["layer"]: r for r in df.to_dicts()}
    assert per[0]["srp"] == pytest.approx(1.0) and per[0]["windows"] == 2
    assert per[1]["srp"] == pytest.approx(2 / 3)
    # pooled: TP and P add over layers: c=1: TP = 4+4, P = 4+8, A = 8 -> 16/20
    assert per[None]["srp"] == pytest.approx(16 / 20)


def test_repetition_rates_by_hand():
    # E=4, k=2. Pairs: ([0,1]->[0,2]) top-1 repeats, share; ([0,2]->[3,1]) neither, overlap 0.
    tr = one_seq([[0, 1], [0, 2], [3, 1]], E=4)
    row = pooled(repetition_rates(tr))
    assert row["pairs"] == 2
    assert row["top1_repeat"] == pytest.approx(1 / 2)
    assert row["top2_share"] == pytest.approx(1 / 2)
    assert row["topk_overlap"] == pytest.approx((1 / 2 + 0) / 2)
    assert row["top1_chance"] == pytest.approx(1 / 4)
    assert row["top2_chance"] == pytest.approx(1 - comb(2, 2) / comb(4, 2))
    # pairs never cross sequences
    tr = Trace.from_sequences([np.array([[0, 1]]), np.array([[0, 1]])], num_experts=4)
    assert pooled(repetition_rates(tr))["pairs"] == 0


def test_sch_both_kinds_by_hand():
    # E=3, k=1, 0,0,1,1 with L=2: windows {0,0} {0,1} {1,1}; C=1 oracle keeps each window's top
    # expert: (2+1+2)/6. lookahead-2 with C=1, stream, cold: 0 m, 0 h, 1 m, 1 h -> 2/4.
    tr = one_seq([[0], [0], [1], [1]], E=3)
    orc = sch(tr, [2], capacities=[1, 2])
    assert pooled(orc.filter(pl.col("capacity") == 1))["hit_rate"] == pytest.approx(5 / 6)
    assert pooled(orc.filter(pl.col("capacity") == 2))["hit_rate"] == pytest.approx(1.0)
    look = sch(tr, [2], capacities=[1], kind="lookahead")
    assert pooled(look)["hit_rate"] == pytest.approx(2 / 4)
    # paper's convention: token service, warm start adds the first request of expert 0 -> 3/4
    look = sch(tr, [2], capacities=[1], kind="lookahead", service="token", start="warm")
    assert pooled(look)["hit_rate"] == pytest.approx(3 / 4)
    assert pooled(look)["rho"] == 1.0


def test_shuffled_keeps_multiset_per_sequence():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 5, size=(n, 2, 1)) for n in (4, 7)]
    tr = Trace.from_sequences(seqs, num_experts=5)
    sh = shuffled(tr, seed=3)
    for s in range(2):
        a, b = tr.seq_offsets[s], tr.seq_offsets[s + 1]
        assert sorted(map(tuple, tr.experts[a:b, :, 0])) == sorted(
            map(tuple, sh.experts[a:b, :, 0])
        )
    assert not np.array_equal(sh.experts, shuffled(tr, seed=4).experts)
    assert np.array_equal(sh.experts, shuffled(tr, seed=3).experts)


@pytest.mark.parametrize(
    "call",
    [
        lambda tr: srp(tr, [0]),
        lambda tr: srp(tr, []),
        lambda tr: sch(tr, [2], capacities=[0]),
        lambda tr: sch(tr, [2], capacities=[9]),
        lambda tr: sch(tr, [2], kind="oracle"),
        lambda tr: srp(tr, [2], phase="train"),
        lambda tr: repetition_rates(tr, phase="both"),
    ],
)
def test_invalid_parameters(call):
    with pytest.raises(InvalidParameterError) as err:
        call(one_seq([[0], [1], [2]], E=3))
    assert "\n" not in str(err.value)


# ---- brute force over random traces ------------------------------------------------------------
def brute_windows(tr: Trace, layer: int, L: int) -> list[np.ndarray]:
    out = []
    for s in range(tr.num_sequences):
        ex = tr.experts[tr.seq_offsets[s] : tr.seq_offsets[s + 1], layer]
        for w in range(len(ex) - L + 1):
            out.append(np.bincount(ex[w : w + L].reshape(-1), minlength=tr.num_experts))
    return out


@st.composite
def traces(draw):
    E = draw(st.integers(2, 7))
    k = draw(st.integers(1, min(3, E)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    hot = draw(st.integers(k, E))
    seqs = []
    for _ in range(draw(st.integers(1, 3))):
        T = draw(st.integers(1, 14))
        seqs.append(
            np.array([[rng.choice(hot, k, replace=False) for _ in range(2)] for _ in range(T)])
        )
    return Trace.from_sequences(seqs, num_experts=E)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tr=traces(), L=st.integers(1, 6))
def test_srp_and_oracle_match_brute_force(tr, L):
    df = srp(tr, [L], shuffled_seed=1)
    orc = sch(tr, [L])
    k, E = tr.top_k, tr.num_experts
    pooled_tp = np.zeros(L + 1)
    pooled_p = np.zeros(L + 1)
    pooled_a = 0
    for layer in range(tr.num_layers):
        wins = brute_windows(tr, layer, L)
        row = df.filter(pl.col("layer") == layer).to_dicts()[0]
        assert row["windows"] == len(wins)
        if not wins:
            assert row["srp"] is None
            continue
        a = sum(int(n.sum()) for n in wins)
        assert a == k * L * len(wins)
        tp = np.array([sum(int((n * (n >= c)).sum()) for n in wins) for c in range(L + 1)])
        p = np.array([sum(L * int((n >= c).sum()) for n in wins) for c in range(L + 1)])
        f1 = 2 * tp / (p + a)
        assert row["srp"] == pytest.approx(f1.max())
        assert row["c_star"] == int(np.argmax(f1))
        assert row["g_hat"] == pytest.approx(p[np.argmax(f1)] / a)
        assert f1[0] == pytest.approx(2 * (k / E) / (1 + k / E))  # the floor is c = 0
        assert row["srp"] >= row["floor"] - 1e-12
        pooled_tp, pooled_p, pooled_a = pooled_tp + tp, pooled_p + p, pooled_a + a
        for C in range(1, E + 1):
            want = sum(np.sort(n)[::-1][:C].sum() for n in wins) / a
            got = orc.filter((pl.col("layer") == layer) & (pl.col("capacity") == C))["hit_rate"]
            assert got[0] == pytest.approx(want)
    if pooled_a:
        assert pooled(df)["srp"] == pytest.approx((2 * pooled_tp / (pooled_p + pooled_a)).max())


# ---- CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> str:
    """A store with one run: 3 sequences (one with decode tokens), 2 MoE layers, E=4, k=2."""
    from routescope.core.records import BatchRouting
    from routescope.store import RoutingStore

    rng = np.random.default_rng(5)
    lengths, phases = [6, 5, 7], []
    experts = []
    for n in lengths:
        experts.append(np.stack([[rng.permutation(4)[:2] for _ in range(2)] for _ in range(n)]))
        phases.append(np.r_[np.zeros(n - 2), np.ones(2)] if n == 7 else np.zeros(n))
    ex = np.concatenate(experts).astype(np.int16)
    batch = BatchRouting(
        seq_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        token_ids=rng.integers(3, 40, sum(lengths)),
        positions=np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        phase=np.concatenate(phases).astype(np.uint8),
        experts=ex,
        weights=np.full(ex.shape, 0.5, dtype=np.float32),
    )
    path = str(tmp_path / "r.duckdb")
    with RoutingStore(path) as store:
        store.create_or_resume_run(
            "run-1",
            name="demo",
            model_id="tiny",
            family="olmoe",
            num_layers=2,
            moe_layers=[0, 1],
            num_experts=4,
            top_k=2,
        )
        meta = [{"seq_id": i, "label": lab} for i, lab in enumerate(["a", "b", "a"])]
        store.write_batch("run-1", meta, batch)
        store.set_status("run-1", "done")
    return path


def cli(*args: str):
    from routescope.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_consistency_json_matches_library(db: str, tmp_path: Path):
    from routescope.store import RoutingStore

    res = cli("analyze", "consistency", "demo", "--db", db, "--segments", "2,3", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    with RoutingStore(db, read_only=True) as store:
        want = srp(store.load_trace("run-1"), [2, 3], shuffled_seed=0)
    got = pl.DataFrame(out["srp"]).sort("segment_length", "layer", nulls_last=True)
    want = want.sort("segment_length", "layer", nulls_last=True)
    assert got["srp"].to_list() == pytest.approx(want["srp"].to_list())
    assert {r["segment_length"] for r in out["sch_segment_oracle"]} == {2, 3}
    # human output and a figure
    html = tmp_path / "srp.html"
    res = cli("analyze", "consistency", "--db", db, "--segments", "1-3", "--plot", str(html))
    assert res.exit_code == 0, res.output
    assert "SRP per layer" in res.output and html.stat().st_size > 1000


def test_cli_cache_json_and_table(db: str, tmp_path: Path):
    from routescope.analysis.cache import cache_hit_rates
    from routescope.store import RoutingStore

    res = cli(
        "analyze",
        "cache",
        "run-1",
        "--db",
        db,
        "--policies",
        "lru,belady",
        "--capacities",
        "1-3",
        "--json",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    got = pl.DataFrame(out["rows"])
    assert set(got["phase"]) == {"prefill", "decode"}
    with RoutingStore(db, read_only=True) as store:
        want = cache_hit_rates(store.load_trace("run-1"), ["lru", "belady"], [1, 2, 3])
    assert sorted(got["hits"].to_list()) == sorted(want["hits"].to_list())
    res = cli(
        "analyze",
        "cache",
        "--db",
        db,
        "--scope",
        "global",
        "--phase",
        "all",
        "-q",
        "--plot",
        str(tmp_path / "c.html"),
    )
    assert res.exit_code == 0, res.output
    assert "one cache of C·#layers slots" in res.output
    assert (tmp_path / "c.html").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--capacities", "0-2"], "outside 1..4"),
        (["--capacities", "x"], "cannot read capacities"),
        (["--policies", "mru"], "unknown cache policy"),
        (["--service", "batch"], "unknown service"),
        (["--plot", "fig.svg"], "use a .html"),
    ],
)
def test_cli_cache_errors_are_one_line(db: str, args: list[str], needle: str, tmp_path: Path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "routescope", "analyze", "cache", "--db", db, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
