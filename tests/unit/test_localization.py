"""Functional localization (DESIGN.md §4.4): hand-computed scores, exact-enumeration references
for the permutation test, planted signals, the null false-positive rate, errors."""

from __future__ import annotations

import dataclasses
from itertools import combinations, product

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routescope.analysis import localization as lo
from routescope.core.errors import InvalidParameterError
from routescope.core.trace import Trace


def hand_trace() -> Trace:
    """E=4, k=2: target label t = seq0 (2 tokens) + seq1 (1 token); control c = seq2 (2 tokens)."""
    return Trace.from_sequences(
        [np.array([[0, 1], [0, 2]]), np.array([[1, 2]]), np.array([[2, 3], [1, 3]])],
        num_experts=4,
        weights=[
            np.array([[0.7, 0.3], [0.6, 0.4]]),
            np.array([[0.5, 0.5]]),
            np.array([[0.8, 0.2], [0.9, 0.1]]),
        ],
        labels=["t", "t", "c"],
    )


def synthetic(
    seed: int,
    planted: tuple[tuple[int, int], ...] = (),
    n_prompts: int = 20,
    n_tok: int = 15,
    n_layers: int = 2,
    e: int = 8,
    k: int = 2,
    boost: float = 0.3,
) -> Trace:
    """Random top-k routing; in target prompts the planted (layer, expert) get a score boost."""
    rng = np.random.default_rng(seed)
    seqs, labels = [], []
    for s in range(2 * n_prompts):
        t = int(rng.integers(n_tok // 2, n_tok + 1))
        scores = rng.random((t, n_layers, e))
        if s < n_prompts:
            for layer, expert in planted:
                scores[:, layer, expert] += boost
        seqs.append(np.argsort(-scores, axis=-1)[..., :k])
        labels.append("t" if s < n_prompts else "c")
    return Trace.from_sequences(seqs, e, labels=labels)


def row(df: pl.DataFrame, layer: int, expert: int) -> dict:
    hit = df.filter((pl.col("layer") == layer) & (pl.col("expert") == expert))
    assert hit.height == 1
    return hit.row(0, named=True)


# ---- scores -----------------------------------------------------------------------------------
def test_scores_hand_computed() -> None:
    t, c = lo.split_labels(hand_trace(), "t", "c")
    r = lo.localize(t, c, n_boot=50, n_perm=50)
    assert r["n1"].unique().to_list() == [3] and r["n2"].unique().to_list() == [2]
    assert [row(r, 0, e)["a1"] for e in range(4)] == [2, 2, 2, 0]
    assert [row(r, 0, e)["a2"] for e in range(4)] == [0, 1, 1, 2]
    assert [row(r, 0, e)["rd"] for e in range(4)] == pytest.approx([2 / 3, 1 / 6, 1 / 6, -1.0])
    assert [row(r, 0, e)["w1"] for e in range(4)] == pytest.approx([1.3 / 3, 0.8 / 3, 0.3, 0.0])
    assert [row(r, 0, e)["w2"] for e in range(4)] == pytest.approx([0.0, 0.45, 0.4, 0.15])
    assert r["expert"].to_list() == [0, 1, 2, 3]  # by rd, ties by expert id
    assert r["rank"].to_list() == [1, 2, 3, 4]
    assert r["prompts1"][0] == 2 and r["prompts2"][0] == 1 and not r["paired"][0]
    rw = lo.localize(t, c, n_boot=50, n_perm=50, weight=True)
    assert rw["expert"].to_list() == [0, 2, 3, 1]  # wd = .433, -.1, -.15, -.183
    assert rw["score"].to_list() == pytest.approx([1.3 / 3, -0.1, -0.15, 0.8 / 3 - 0.45])


def test_ranking_is_global_across_layers() -> None:
    tr = synthetic(3, planted=((1, 4), (0, 2)), boost=(0.5))
    r = lo.localize(*lo.split_labels(tr, "t", "c"), n_boot=20, n_perm=20)
    assert r["score"].to_list() == sorted(r["score"].to_list(), reverse=True)
    assert set(r["layer"].head(2).to_list()) == {0, 1}


# ---- permutation p-values against exact enumeration ---------------------------------------------
def per_prompt(trace: Trace, layer_col: int, expert: int) -> tuple[np.ndarray, np.ndarray]:
    n = trace.seq_lengths.astype(float)
    a = np.array(
        [
            (trace.experts[s0:s1, layer_col, :] == expert).any(axis=1).sum()
            for s0, s1 in zip(trace.seq_offsets[:-1], trace.seq_offsets[1:], strict=True)
        ],
        dtype=float,
    )
    return n, a


def test_unpaired_permutation_matches_exact_enumeration() -> None:
    tr = synthetic(7, planted=((0, 1),), n_prompts=3, n_tok=6, n_layers=1, e=4, boost=0.4)
    t, c = lo.split_labels(tr, "t", "c")
    r = lo.localize(t, c, n_boot=10, n_perm=20_000, seed=1)
    for expert in range(4):
        n, a = per_prompt(tr, 0, expert)
        obs = a[:3].sum() / n[:3].sum() - a[3:].sum() / n[3:].sum()
        hits = 0
        splits = list(combinations(range(6), 3))
        for tgt in splits:
            m = np.zeros(6, dtype=bool)
            m[list(tgt)] = True
            rd = a[m].sum() / n[m].sum() - a[~m].sum() / n[~m].sum()
            hits += abs(rd) >= abs(obs) - 1e-12
        exact = hits / len(splits)
        assert row(r, 0, expert)["p_value"] == pytest.approx(exact, abs=0.015)


def test_paired_target_spans_match_exact_sign_flips() -> None:
    rng = np.random.default_rng(5)
    seqs, flags = [], []
    for _ in range(4):
        scores = rng.random((8, 1, 4))
        in_t = np.arange(8) >= 5
        scores[in_t, 0, 2] += 0.5
        seqs.append(np.argsort(-scores, axis=-1)[..., :2])
        flags.append(in_t)
    tr = Trace.from_sequences(seqs, 4, in_target=np.concatenate(flags))
    t, c = lo.split_target_spans(tr)
    tt, ct = t.to_trace(), c.to_trace()
    assert tt.num_tokens == 12 and ct.num_tokens == 20
    r = lo.localize(t, c, n_boot=10, n_perm=20_000, seed=2)
    assert r["paired"].all()
    for expert in range(4):
        n1, a1 = per_prompt(tt, 0, expert)
        n2, a2 = per_prompt(ct, 0, expert)
        obs = a1.sum() / n1.sum() - a2.sum() / n2.sum()
        hits = 0
        for flip in product([False, True], repeat=4):
            f = np.array(flip)
            x1, m1 = np.where(f, a2, a1), np.where(f, n2, n1)
            x2, m2 = np.where(f, a1, a2), np.where(f, n1, n2)
            hits += abs(x1.sum() / m1.sum() - x2.sum() / m2.sum()) >= abs(obs) - 1e-12
        assert row(r, 0, expert)["p_value"] == pytest.approx(hits / 16, abs=0.015)
        assert row(r, 0, expert)["rd"] == pytest.approx(obs)


# ---- bootstrap --------------------------------------------------------------------------------
def test_bootstrap_ci_matches_index_resampling_reference() -> None:
    tr = synthetic(11, planted=((0, 5),), n_prompts=8, n_layers=1)
    t, c = lo.split_labels(tr, "t", "c")
    r = lo.localize(t, c, n_boot=4000, n_perm=10, seed=3)
    n1, a1 = per_prompt(t.to_trace(), 0, 5)
    n2, a2 = per_prompt(c.to_trace(), 0, 5)
    rng = np.random.default_rng(99)
    rds = []
    for _ in range(4000):
        i = rng.integers(0, len(n1), len(n1))
        j = rng.integers(0, len(n2), len(n2))
        rds.append(a1[i].sum() / n1[i].sum() - a2[j].sum() / n2[j].sum())
    lo_ref, hi_ref = np.quantile(rds, [0.025, 0.975])
    got = row(r, 0, 5)
    assert got["ci_low"] == pytest.approx(lo_ref, abs=0.02)
    assert got["ci_high"] == pytest.approx(hi_ref, abs=0.02)
    assert got["ci_low"] < got["rd"] < got["ci_high"]


def test_bootstrap_ci_collapses_when_prompts_are_identical() -> None:
    same = [np.array([[0, 1], [0, 2]])] * 3 + [np.array([[1, 3], [2, 3]])] * 3
    tr = Trace.from_sequences(same, 4, labels=["t"] * 3 + ["c"] * 3)
    r = lo.localize(*lo.split_labels(tr, "t", "c"), n_boot=200, n_perm=200)
    assert np.allclose(r["ci_low"], r["rd"]) and np.allclose(r["ci_high"], r["rd"])


# ---- planted signal and the null --------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_planted_experts_rank_first_and_are_significant(seed: int) -> None:
    planted = {(0, 3), (1, 5)}
    tr = synthetic(seed, planted=tuple(planted))
    r = lo.localize(*lo.split_labels(tr, "t", "c"), n_boot=200, n_perm=1000, seed=seed)
    top = r.head(2)
    assert set(zip(top["layer"], top["expert"], strict=True)) == planted
    assert (top["q_value"] < 0.05).all() and (top["ci_low"] > 0).all()
    others_up = r.slice(2).filter(pl.col("rd") > 0)
    assert (others_up["q_value"] >= 0.05).all()
    spec = lo.steering_spec_from_ranking(r, top=5)
    assert {(x["layer"], x["expert"]) for x in spec["edits"]} == planted
    assert spec["mode"] == "reroute" and all(x["action"] == "deactivate" for x in spec["edits"])


def test_no_planted_signal_gives_no_discovery_in_95_percent_of_repetitions() -> None:
    """BH at 0.05 bounds P(any discovery) under the complete null by 0.05, so the expected
    no-discovery rate sits just above 95%; 1,000 repetitions (not 40) keep the check from
    being decided by binomial noise. Also checks the per-test p-values are calibrated, not merely
    conservative (a test that never rejects would pass the first check)."""
    reps = 1000
    false_hits = 0
    pvals = []
    for rep in range(reps):
        tr = synthetic(1000 + rep)
        r = lo.localize(*lo.split_labels(tr, "t", "c"), n_boot=2, n_perm=1000, seed=rep)
        false_hits += bool((r["q_value"] < 0.05).any())
        pvals.append(r["p_value"].to_numpy())
    assert false_hits <= 0.05 * reps
    pooled = np.concatenate(pvals)
    assert 0.035 <= (pooled <= 0.05).mean() <= 0.065


# ---- BH ---------------------------------------------------------------------------------------
def bh_reference(p: list[float]) -> list[float]:
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    q = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        i = order[rank - 1]
        running = min(running, p[i] * m / rank)
        q[i] = running
    return q


def test_benjamini_hochberg_matches_reference() -> None:
    assert lo.benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5])).tolist() == pytest.approx(
        [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5]
    )
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.round(rng.random(30) ** 2, 2)  # ties included
        assert lo.benjamini_hochberg(p).tolist() == pytest.approx(bh_reference(p.tolist()))


# ---- constructors and designs -----------------------------------------------------------------
def test_split_labels_rest_and_prompt_sets() -> None:
    tr = dataclasses.replace(hand_trace(), prompt_sets=np.array(["A", "B", "B"], dtype=object))
    t, c = (s.to_trace() for s in lo.split_labels(tr, "c"))
    assert t.num_tokens == 2 and c.num_tokens == 3
    t, c = (s.to_trace() for s in lo.split_prompt_sets(tr, "B"))
    assert t.num_tokens == 3 and c.num_tokens == 2 and list(c.seq_ids) == [0]
    t, c = (s.to_trace() for s in lo.split_prompt_sets(tr, "A", "B"))
    assert t.num_tokens == 2 and c.num_tokens == 3


def test_target_spans_with_control_label() -> None:
    tr = dataclasses.replace(hand_trace(), in_target=np.array([False, True, True, True, False]))
    t, c = lo.split_target_spans(tr, control="c")
    assert t.to_trace().num_tokens == 2 and c.to_trace().num_tokens == 2  # seq2's: control
    r = lo.localize(t, c, n_boot=10, n_perm=10)
    assert not r["paired"][0]


def test_two_runs_over_the_same_prompts_are_paired() -> None:
    base = dataclasses.replace(
        hand_trace(),
        run_id="run-a",
        prompt_sets=np.array(["s"] * 3, dtype=object),
        prompt_ids=np.array(["p0", "p1", "p2"], dtype=object),
    )
    rev = np.array([2, 1, 0])  # the other run stored the same prompts in another order
    other = Trace.from_sequences(
        [np.array([[3, 2], [3, 1]]), np.array([[1, 2]]), np.array([[0, 1], [0, 2]])],
        num_experts=4,
        run_id="run-b",
        prompt_sets=np.array(["s"] * 3, dtype=object),
        prompt_ids=base.prompt_ids[rev],
    )
    r = lo.localize(base, other, n_boot=10, n_perm=10)
    assert r["paired"].all()
    # Same token sets as base -> every rd is exactly 0.
    assert np.allclose(r["rd"], 0.0)


def test_bad_input_errors() -> None:
    tr = hand_trace()
    with pytest.raises(InvalidParameterError, match="label 'x' not in this run"):
        lo.split_labels(tr, "x", "c")
    with pytest.raises(InvalidParameterError, match="same label"):
        lo.split_labels(tr, "t", "t")
    with pytest.raises(InvalidParameterError, match="target span"):
        lo.split_target_spans(tr)
    with pytest.raises(InvalidParameterError, match="prompt set"):
        lo.split_prompt_sets(tr, "nope")
    t, c = lo.split_labels(tr, "t", "c")
    other_e = Trace.from_sequences([np.array([[0, 1]])], num_experts=8, seq_ids=np.array([9]))
    with pytest.raises(InvalidParameterError, match="E=4"):
        lo.localize(t, other_e)
    with pytest.raises(InvalidParameterError, match="share 2 prompts but not all"):
        lo.localize(t, tr)
    empty = t.to_trace().select_tokens(np.zeros(3, dtype=bool))
    with pytest.raises(InvalidParameterError, match="empty"):
        lo.localize(empty, c)
    with pytest.raises(InvalidParameterError, match="at least 1"):
        lo.localize(t, c, n_perm=0)


def test_steering_spec_filters() -> None:
    t, c = lo.split_labels(hand_trace(), "t", "c")
    r = lo.localize(t, c, n_boot=10, n_perm=10)
    spec = lo.steering_spec_from_ranking(r, top=1, q_max=None)
    assert spec == {"edits": [{"layer": 0, "expert": 0, "action": "deactivate"}], "mode": "reroute"}
    assert lo.steering_spec_from_ranking(r, top=3, q_max=0.0)["edits"] == []
    # Only positive scores qualify, so expert 3 (rd = -1) never appears.
    assert all(x["expert"] != 3 for x in lo.steering_spec_from_ranking(r, 10, q_max=None)["edits"])


# ---- CLI --------------------------------------------------------------------------------------
def write_db(path, trace: Trace, run_id: str) -> None:  # noqa: ANN001
    """Store a synthetic trace as a run, through the store's own writer."""
    from routescope.core.records import BatchRouting
    from routescope.store import RoutingStore

    with RoutingStore(str(path)) as store:
        store.create_or_resume_run(
            run_id,
            name=run_id,
            model_id="synthetic",
            family="olmoe",
            num_layers=trace.num_layers,
            moe_layers=list(trace.layers),
            num_experts=trace.num_experts,
            top_k=trace.top_k,
        )
        batch = BatchRouting(
            seq_offsets=trace.seq_offsets,
            token_ids=trace.token_ids,
            positions=trace.positions,
            phase=trace.phase,
            experts=trace.experts,
            weights=trace.weights,
        )
        meta = [
            {"seq_id": int(s), "label": lab, "prompt_set": "ps", "prompt_id": f"p{s}"}
            for s, lab in zip(trace.seq_ids, trace.labels, strict=True)
        ]
        store.write_batch(run_id, meta, batch, in_target=trace.in_target)


def test_cli_localize_and_specialization(tmp_path) -> None:  # noqa: ANN001
    import json

    from typer.testing import CliRunner

    from routescope.cli import app

    tr = synthetic(0, planted=((0, 3), (1, 5)))
    db = tmp_path / "r.duckdb"
    write_db(db, tr, "syn")
    runner = CliRunner()
    args = ["localize", "syn", "--db", str(db), "--target", "label:t", "--control", "label:c"]
    spec_file, plot_file = tmp_path / "spec.json", tmp_path / "rd.html"
    res = runner.invoke(
        app,
        [*args, "--json", "--top", "3", "--n-boot", "100", "--n-perm", "500", "-q"]
        + ["--spec-out", str(spec_file), "--plot", str(plot_file)],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{") :])
    assert {(r["layer"], r["expert"]) for r in out["results"][:2]} == {(0, 3), (1, 5)}
    assert len(out["results"]) == 3 and out["n1"] == int(tr.seq_lengths[:20].sum())
    direct = lo.localize(*lo.split_labels(tr, "t", "c"), n_boot=100, n_perm=500)
    assert [r["rd"] for r in out["results"]] == pytest.approx(direct["rd"].head(3).to_list())
    assert [r["q_value"] for r in out["results"]] == pytest.approx(direct["q_value"].head(3))
    spec = json.loads(spec_file.read_text())
    assert {(x["layer"], x["expert"]) for x in spec["edits"]} == {(0, 3), (1, 5)}
    assert "plotly" in plot_file.read_text()[:5_000_000].lower()
    table = runner.invoke(app, [*args, "--n-boot", "50", "--n-perm", "50", "-q"])
    assert table.exit_code == 0 and "RD" in table.stdout and "N1=" in table.stdout

    spec_res = runner.invoke(
        app, ["analyze", "specialization", "syn", "--db", str(db), "--json", "--top", "1"]
    )
    assert spec_res.exit_code == 0, spec_res.output
    sj = json.loads(spec_res.stdout)
    # label t's most over-used expert is a planted one, ×(share / (k/E)) straight from the trace
    best_t = next(r for r in sj["top_specialized"] if r["label"] == "t")
    assert (best_t["layer"], best_t["expert"]) in {(0, 3), (1, 5)}
    t_only = tr.select_labels(["t"])
    col = t_only.layer_position(best_t["layer"])
    share = (t_only.experts[:, col, :] == best_t["expert"]).any(axis=1).mean()
    assert best_t["share"] == pytest.approx(share)
    assert len(sj["load_summary"]) == 2 and len(sj["domain_cv"]) == 2
    voc = runner.invoke(
        app,
        ["analyze", "specialization", "syn", "--db", str(db), "--json", "--vocab"]
        + ["--min-count", "1"],
    )
    assert voc.exit_code == 0, voc.output
    rows = json.loads(voc.stdout)["vocabulary"]
    # Synthetic token ids are all 0: its share for expert 3 is expert 3's rate at layer 0.
    r3 = next(r for r in rows if r["expert"] == 3)
    assert r3["layer"] == 0 and r3["token_id"] == 0 and r3["occurrences"] == tr.num_tokens
    assert r3["share"] == pytest.approx((tr.experts[:, 0, :] == 3).any(axis=1).mean())
    html = tmp_path / "spec.html"
    spec_res = runner.invoke(
        app,
        ["analyze", "specialization", "syn", "--db", str(db), "--layer", "1", "--plot", str(html)],
    )
    assert spec_res.exit_code == 0 and html.exists() and "CV across label" in spec_res.stdout


def test_cli_bad_spec_is_one_line_error(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    import sys

    from routescope.cli import main

    db = tmp_path / "r.duckdb"
    write_db(db, hand_trace(), "h")
    for spec, needle in (
        ("label:nope", "label 'nope' not in this run"),
        ("bogus", "token-set spec"),
    ):
        argv = [
            "routescope",
            "localize",
            "h",
            "--db",
            str(db),
            "--target",
            spec,
            "--control",
            "rest",
        ]
        monkeypatch.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], lines


# ---- invariants -------------------------------------------------------------------------------
@settings(max_examples=20, deadline=None)
@given(st.integers(0, 100_000), st.booleans())
def test_localize_invariants(seed: int, weight: bool) -> None:
    tr = synthetic(seed, n_prompts=4, n_tok=6, e=5, k=2)
    r = lo.localize(*lo.split_labels(tr, "t", "c"), n_boot=30, n_perm=30, seed=seed, weight=weight)
    # Every token selects k experts per layer, so rates sum to k on both sides: rd sums to 0.
    sums = r.group_by("layer").agg(pl.col("rd").sum(), pl.col("p1").sum(), pl.col("p2").sum())
    assert (
        np.allclose(sums["rd"], 0.0) and np.allclose(sums["p1"], 2) and np.allclose(sums["p2"], 2)
    )
    assert ((r["p_value"] > 0) & (r["p_value"] <= 1)).all()
    assert (r["q_value"] >= r["p_value"] - 1e-12).all() and (r["q_value"] <= 1).all()
    assert (r["ci_low"] <= r["ci_high"]).all()
    assert r["rank"].to_list() == list(range(1, r.height + 1))
    assert np.all(np.diff(r["score"].to_numpy()) <= 1e-15)


# ---- token-set specs and figures ----------------------------------------------------------------
def test_token_sets_from_specs() -> None:
    tr = dataclasses.replace(
        hand_trace(),
        in_target=np.array([False, True, True, True, False]),
        prompt_sets=np.array(["A", "A", "B"], dtype=object),
    )

    def both(*specs: str, **kw) -> tuple[Trace, Trace]:  # noqa: ANN003
        t, c = lo.token_sets_from_specs(tr, *specs, **kw)
        return t.to_trace(), c.to_trace()

    t, c = both("label:t", "rest")
    assert (t.num_tokens, c.num_tokens) == (3, 2)
    t, c = both("set:B", "set:A")
    assert (t.num_tokens, c.num_tokens) == (2, 3)
    t, c = both("target", "rest")  # seq1 has no 'rest' tokens: dropped
    assert list(t.seq_ids) == [0, 2] and list(c.seq_ids) == [0, 2]
    other = dataclasses.replace(hand_trace(), run_id="other")
    loaded: list[str] = []

    def load(name: str) -> Trace:
        loaded.append(name)
        return other

    t, c = both("label:c", "run:other", load_run=load)
    assert loaded == ["other"] and c.num_tokens == 5 and t.num_tokens == 2
    for bad, msg in (
        ("labl:x", "cannot read token-set spec"),
        ("label:", "cannot read token-set spec"),
        ("target:x", "cannot read token-set spec"),
    ):
        with pytest.raises(InvalidParameterError, match=msg):
            lo.token_sets_from_specs(tr, bad, "rest")
    with pytest.raises(InvalidParameterError, match="only be the control"):
        lo.token_sets_from_specs(tr, "rest", "label:c")
    with pytest.raises(InvalidParameterError, match="'rest' needs"):
        lo.token_sets_from_specs(tr, "run:other", "rest", load_run=load)
    with pytest.raises(InvalidParameterError, match="need a database"):
        lo.token_sets_from_specs(tr, "label:t", "run:x")


def test_rd_heatmap_shows_the_scores(tmp_path) -> None:  # noqa: ANN001
    from routescope.analysis import figures_experts as fx

    tr = synthetic(1, planted=((1, 2),), boost=0.6)
    r = lo.localize(*lo.split_labels(tr, "t", "c"), n_boot=20, n_perm=400)
    fig = fx.rd_heatmap(r)
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (2, 8)
    for layer, expert, score in zip(r["layer"], r["expert"], r["score"], strict=True):
        assert z[layer, expert] == pytest.approx(score)
    marked = set(zip(fig.data[1].y, fig.data[1].x, strict=True))  # q < 0.05 markers
    assert ("1", 2) in marked and len(marked) == int((r["q_value"] < 0.05).sum())
    out = fx.write_html([fig, fx.rd_heatmap(r, title="again")], tmp_path / "f.html")
    text = out.read_text()
    assert text.count('<script type="text/javascript">/**') <= 1 and "again" in text


def test_cli_two_runs_over_the_same_prompts(tmp_path) -> None:  # noqa: ANN001
    import json

    from typer.testing import CliRunner

    from routescope.cli import app

    base = synthetic(4, n_prompts=6, n_layers=1)
    # The "steered" run: same prompts and tokens, every expert id shifted by one.
    steered = dataclasses.replace(base, experts=((base.experts + 1) % 8).astype(np.int16))
    db = tmp_path / "two.duckdb"
    write_db(db, base, "a")
    write_db(db, steered, "b")
    res = CliRunner().invoke(
        app,
        ["localize", "--db", str(db), "--target", "run:b", "--control", "run:a", "--json", "-q"]
        + ["--top", "0", "--n-boot", "20", "--n-perm", "20"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["paired"] and out["prompts1"] == out["prompts2"] == 12
    p1 = (steered.experts[:, 0, :] == 0).any(axis=1).mean()
    p2 = (base.experts[:, 0, :] == 0).any(axis=1).mean()
    got = next(r for r in out["results"] if r["expert"] == 0)
    assert got["rd"] == pytest.approx(p1 - p2)


def test_cli_ranking_out_writes_per_layer_expert_lists(tmp_path) -> None:  # noqa: ANN001
    """`localize --ranking-out` and `analyze specialization --ranking-out` write one JSON line
    per layer: the planted expert first for localization, experts by load share for load."""
    import json

    from typer.testing import CliRunner

    from routescope.analysis.specialization import expert_load
    from routescope.cli import app

    tr = synthetic(0, planted=((0, 3), (1, 5)))
    db = tmp_path / "r.duckdb"
    write_db(db, tr, "syn")
    runner = CliRunner()
    loc_file, load_file = tmp_path / "loc.jsonl", tmp_path / "load.jsonl"
    res = runner.invoke(
        app,
        ["localize", "syn", "--db", str(db), "--target", "label:t", "--control", "label:c"]
        + ["--n-boot", "50", "--n-perm", "50", "-q", "--ranking-out", str(loc_file)],
    )
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in loc_file.read_text().splitlines()]
    assert [r["layer"] for r in lines] == sorted(tr.layers)
    assert lines[0]["experts"][0] == 3 and lines[1]["experts"][0] == 5
    assert all(sorted(r["experts"]) == list(range(tr.num_experts)) for r in lines)
    res = runner.invoke(
        app,
        [
            "analyze",
            "specialization",
            "syn",
            "--db",
            str(db),
            "-q",
            "--ranking-out",
            str(load_file),
        ],
    )
    assert res.exit_code == 0, res.output
    load = expert_load(tr)
    for rec in (json.loads(x) for x in load_file.read_text().splitlines()):
        shares = load.filter(load["layer"] == rec["layer"]).sort(
            ["share", "expert"], descending=[True, False]
        )
        assert rec["experts"] == shares["expert"].to_list()
