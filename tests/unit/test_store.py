"""RoutingStore: write synthetic batches, read them back, check against plain references."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from routescope.core.errors import InvalidParameterError, StoreError
from routescope.core.records import BatchRouting
from routescope.store.parquet import export_parquet, load_trace_parquet
from routescope.store.store import RoutingStore

E, K = 8, 2
LAYERS = [0, 2, 3]  # model layer 1 is dense


def make_seq(rng: np.random.Generator, n_prefill: int, n_decode: int) -> dict:
    """One synthetic sequence: distinct experts per (token, layer), random weights."""
    n = n_prefill + n_decode
    experts = np.stack(
        [np.stack([rng.permutation(E)[:K] for _ in LAYERS]) for _ in range(n)]
    ).astype(np.int16)
    return {
        "experts": experts,
        "weights": rng.random((n, len(LAYERS), K)).astype(np.float32),
        "probs": rng.random((n, len(LAYERS), E)).astype(np.float32),
        "token_ids": rng.integers(3, 50, n),
        "phase": np.r_[np.zeros(n_prefill), np.ones(n_decode)].astype(np.uint8),
        "in_target": rng.random(n) < 0.3,
    }


def batch_of(seqs: list[dict], probs: bool = True) -> BatchRouting:
    lengths = [len(s["token_ids"]) for s in seqs]
    return BatchRouting(
        seq_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        token_ids=np.concatenate([s["token_ids"] for s in seqs]),
        positions=np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
        phase=np.concatenate([s["phase"] for s in seqs]),
        experts=np.concatenate([s["experts"] for s in seqs]),
        weights=np.concatenate([s["weights"] for s in seqs]),
        probs=np.concatenate([s["probs"] for s in seqs]) if probs else None,
    )


def new_run(store: RoutingStore, run_id: str = "run-a", **kw) -> bool:
    args = dict(
        name=kw.pop("name", run_id),
        model_id="tiny/olmoe",
        family="olmoe",
        num_layers=4,
        moe_layers=LAYERS,
        num_experts=E,
        top_k=K,
        config={"max_length": 16},
    )
    args.update(kw)
    return store.create_or_resume_run(run_id, **args)


LABELS = ["code", "prose", "code", None, "prose"]


@pytest.fixture
def filled(tmp_path: Path) -> tuple[str, dict[int, dict]]:
    """A database with one run of 5 sequences written in two batches, out of seq_id order."""
    rng = np.random.default_rng(7)
    seqs = {i: make_seq(rng, 3 + i, i % 2 * 2) for i in range(5)}
    path = str(tmp_path / "r.duckdb")
    with RoutingStore(path) as store:
        assert new_run(store) is False
        texts = {i: f"tok{i}" for i in range(60)}
        for order in ([3, 0], [4, 1, 2]):
            meta = [
                {
                    "seq_id": i,
                    "prompt_set": "set",
                    "prompt_id": f"p{i}",
                    "label": LABELS[i],
                    "text": f"text {i}",
                }
                for i in order
            ]
            b = batch_of([seqs[i] for i in order])
            in_target = np.concatenate([seqs[i]["in_target"] for i in order])
            store.write_batch("run-a", meta, b, texts, in_target)
    return path, seqs


def reference_trace(seqs: dict[int, dict], ids: list[int]) -> dict[str, np.ndarray]:
    return {
        "experts": np.concatenate([seqs[i]["experts"] for i in ids]),
        "weights": np.concatenate([seqs[i]["weights"] for i in ids]),
        "token_ids": np.concatenate([seqs[i]["token_ids"] for i in ids]),
        "phase": np.concatenate([seqs[i]["phase"] for i in ids]),
        "in_target": np.concatenate([seqs[i]["in_target"] for i in ids]),
        "seq_offsets": np.r_[0, np.cumsum([len(seqs[i]["token_ids"]) for i in ids])],
    }


def test_round_trip_equals_written_arrays(filled):
    path, seqs = filled
    with RoutingStore(path, read_only=True) as store:
        tr = store.load_trace("run-a")
    ref = reference_trace(seqs, [0, 1, 2, 3, 4])
    for key, value in ref.items():
        np.testing.assert_array_equal(getattr(tr, key), value, err_msg=key)
    assert tr.experts.dtype == np.int16 and tr.weights.dtype == np.float32
    assert tr.layers == tuple(LAYERS) and tr.num_experts == E and tr.top_k == K
    assert tr.labels.tolist() == LABELS
    assert tr.seq_ids.tolist() == [0, 1, 2, 3, 4]
    assert tr.prompt_ids.tolist() == [f"p{i}" for i in range(5)]
    expected_pos = np.concatenate([np.arange(len(seqs[i]["token_ids"])) for i in range(5)])
    np.testing.assert_array_equal(tr.positions, expected_pos)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"phase": "prefill"},
        {"phase": "decode"},
        {"labels": ["prose"]},
        {"labels": ["code", "prose"], "phase": "prefill"},
        {"layers": [3, 0]},
    ],
)
def test_sql_filters_match_numpy_selection(filled, kwargs):
    path, _ = filled
    with RoutingStore(path, read_only=True) as store:
        full = store.load_trace("run-a")
        got = store.load_trace("run-a", **kwargs)
    want = full
    if "labels" in kwargs:
        want = want.select_labels(kwargs["labels"])
    if "phase" in kwargs:
        want = want.select_phase(kwargs["phase"])
    if "layers" in kwargs:
        want = want.select_layers(kwargs["layers"])
    for key in (
        "experts",
        "weights",
        "seq_offsets",
        "phase",
        "token_ids",
        "positions",
        "in_target",
        "seq_ids",
    ):
        np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
    assert got.layers == want.layers
    assert got.labels.tolist() == want.labels.tolist()


def test_plain_duckdb_counts_and_route_choices(filled):
    path, seqs = filled
    n_tok = sum(len(s["token_ids"]) for s in seqs.values())
    with RoutingStore(path, read_only=True) as store:
        tr = store.load_trace()
        runs = store.runs()
        info = store.run_info("run-a")
    con = duckdb.connect(path, read_only=True)
    q = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
    assert q("SELECT count(*) FROM routes WHERE run_id = 'run-a'") == tr.num_tokens * len(LAYERS)
    assert q("SELECT count(*) FROM tokens") == n_tok == tr.num_tokens
    assert q("SELECT count(*) FROM sequences") == 5 == tr.num_sequences
    assert q("SELECT count(*) FROM router_probs") == n_tok * len(LAYERS)
    assert q("SELECT count(*) FROM route_choices") == n_tok * len(LAYERS) * K
    assert q("SELECT count(*) FROM tokens WHERE phase = 'decode'") == int(tr.phase.sum())
    # one long-form row checked against the arrays: seq 3, position 2, layer 2, rank 1
    row = con.execute(
        "SELECT expert, weight FROM route_choices WHERE seq_id = 3 AND pos = 2 AND layer = 2 "
        "AND rank = 1"
    ).fetchall()
    assert row == [(int(seqs[3]["experts"][2, 1, 1]), pytest.approx(seqs[3]["weights"][2, 1, 1]))]
    # expert counts per layer from SQL equal numpy bincounts
    sql_counts = dict(
        con.execute(
            "SELECT expert, count(*) FROM route_choices WHERE layer = 3 GROUP BY expert"
        ).fetchall()
    )
    np_counts = np.bincount(tr.experts[:, 2, :].ravel(), minlength=E)
    assert {e: sql_counts.get(e, 0) for e in range(E)} == dict(enumerate(np_counts.tolist()))
    probs = con.execute(
        "SELECT probs FROM router_probs WHERE seq_id = 4 AND pos = 1 AND layer = 0"
    ).fetchall()[0][0]
    np.testing.assert_allclose(probs, seqs[4]["probs"][1, 0])
    con.close()
    assert runs.row(0, named=True)["tokens"] == n_tok
    assert runs.row(0, named=True)["sequences"] == 5
    assert runs.row(0, named=True)["labels"] == ["code", "prose"]
    assert (
        info["tokens"] == n_tok and info["sequences"] == 5 and info["config"] == {"max_length": 16}
    )


def test_token_strings_and_sequences(filled):
    path, seqs = filled
    with RoutingStore(path, read_only=True) as store:
        strings = store.token_strings()
        frame = store.sequences("run-a")
    ids = set(np.concatenate([s["token_ids"] for s in seqs.values()]).tolist())
    assert strings == {i: f"tok{i}" for i in ids}
    assert frame["seq_id"].to_list() == [0, 1, 2, 3, 4]
    assert frame["num_tokens"].to_list() == [len(seqs[i]["token_ids"]) for i in range(5)]


def test_resolve_run_by_id_name_latest_and_unknown(tmp_path):
    with RoutingStore(tmp_path / "x.duckdb") as store:
        with pytest.raises(StoreError, match="no runs"):
            store.resolve_run(None)
        new_run(store, "r1", name="first")
        store.con.execute("UPDATE runs SET created_at = created_at - INTERVAL 1 HOUR")
        new_run(store, "r2", name="second")
        assert store.resolve_run("r1") == "r1"
        assert store.resolve_run("second") == "r2"
        assert store.resolve_run(None) == store.resolve_run("latest") == "r2"
        with pytest.raises(StoreError, match=r"no run 'nope'.*r1 \(first\)"):
            store.resolve_run("nope")


def test_resume_checks_shape_and_config(tmp_path):
    with RoutingStore(tmp_path / "x.duckdb") as store:
        assert new_run(store) is False
        store.set_status("run-a", "interrupted")
        assert new_run(store) is True
        assert store.run_info("run-a")["status"] == "running"
        with pytest.raises(StoreError, match="different num_experts"):
            new_run(store, num_experts=16)
        with pytest.raises(StoreError, match="different config"):
            new_run(store, config={"max_length": 32})


def test_duplicate_sequence_is_refused_and_rolled_back(filled):
    path, seqs = filled
    with RoutingStore(path) as store:
        before = store.con.execute("SELECT count(*) FROM routes").fetchall()[0][0]
        rng = np.random.default_rng(1)
        b = batch_of([make_seq(rng, 2, 0), seqs[1]])
        with pytest.raises(StoreError, match="already stored"):
            store.write_batch("run-a", [{"seq_id": 9}, {"seq_id": 1}], b)
        assert store.con.execute("SELECT count(*) FROM routes").fetchall()[0][0] == before
        assert store.stored_seq_ids("run-a") == {0, 1, 2, 3, 4}


def test_failed_insert_leaves_no_partial_sequence(filled, monkeypatch):
    """An error after the sequences/tokens inserts rolls the whole batch back."""
    path, _ = filled
    with RoutingStore(path) as store:
        rng = np.random.default_rng(2)
        bad = batch_of([make_seq(rng, 3, 0)], probs=False)
        bad.probs = np.zeros((3, len(LAYERS), E + 1, 2), dtype=np.float32)  # not [N, L, E]
        with pytest.raises(Exception):  # noqa: B017
            store.write_batch("run-a", [{"seq_id": 7}], bad)
        assert 7 not in store.stored_seq_ids("run-a")
        n = store.con.execute("SELECT count(*) FROM tokens WHERE seq_id = 7").fetchall()[0][0]
        assert n == 0


def test_memo_result_hit_miss_and_invalidation(filled):
    path, seqs = filled
    calls = []

    def compute() -> pl.DataFrame:
        calls.append(1)
        return pl.DataFrame({"layer": [0, 2], "value": [0.5, 0.25]})

    with RoutingStore(path) as store:
        a = store.memo_result("run-a", "load", {"phase": "all", "c": 1}, compute)
        b = store.memo_result("run-a", "load", {"c": 1, "phase": "all"}, compute)  # same key
        assert len(calls) == 1 and a.equals(b)
        store.memo_result("run-a", "load", {"phase": "prefill", "c": 1}, compute)
        store.memo_result("run-a", "other", {"phase": "all", "c": 1}, compute)
        assert len(calls) == 3
        # writing to the run clears its cache
        rng = np.random.default_rng(3)
        store.write_batch("run-a", [{"seq_id": 5}], batch_of([make_seq(rng, 2, 0)]))
        store.memo_result("run-a", "load", {"phase": "all", "c": 1}, compute)
        assert len(calls) == 4
    with RoutingStore(path, read_only=True) as ro:
        hit = ro.memo_result("run-a", "load", {"phase": "all", "c": 1}, compute)
        assert len(calls) == 4 and hit.equals(a)
        # a miss computes, then saves the entry by taking the write lock briefly
        ro.memo_result("run-a", "load", {"new": True}, compute)
        again = ro.memo_result("run-a", "load", {"new": True}, compute)
        assert len(calls) == 5 and again.equals(a)
        assert ro.read_only and ro.runs()["run_id"].to_list() == ["run-a"]  # still usable
    with RoutingStore(path, read_only=True) as ro:  # a later reader gets the saved entry
        ro.memo_result("run-a", "load", {"new": True}, compute)
        assert len(calls) == 5


def test_read_only_cache_skips_saving_while_a_writer_holds_the_file(filled, monkeypatch):
    """If a collection job grabs the file between the reader's close and its brief write, the
    result is returned uncached and the reader reopens read-only."""
    import routescope.store.store as store_mod

    path, _ = filled
    real_connect = duckdb.connect

    def locked_for_writers(database, read_only=False, **kw):
        if not read_only:
            raise duckdb.IOException("Could not set lock on file: Conflicting lock (PID 1)")
        return real_connect(database, read_only=read_only, **kw)

    with RoutingStore(path, read_only=True) as ro:
        monkeypatch.setattr(store_mod.duckdb, "connect", locked_for_writers)
        got = ro.memo_result("run-a", "k", {}, lambda: pl.DataFrame({"x": [1]}))
        assert got.equals(pl.DataFrame({"x": [1]}))
        assert ro.runs()["run_id"].to_list() == ["run-a"]  # reopened, still usable
        monkeypatch.setattr(store_mod.duckdb, "connect", real_connect)
    with RoutingStore(path, read_only=True) as store:
        n = store.con.execute("SELECT count(*) FROM analysis_results").fetchall()[0][0]
    assert n == 0


def test_read_only_missing_file_is_one_line(tmp_path):
    with pytest.raises(StoreError, match="no routing database at") as info:
        RoutingStore(tmp_path / "absent.duckdb", read_only=True)
    assert "\n" not in str(info.value)


def test_locked_database_is_one_clear_line(tmp_path):
    path = tmp_path / "locked.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, sys, time; c = duckdb.connect({str(path)!r}); print('ok', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreError) as info:
            RoutingStore(path)
        msg = str(info.value)
        assert str(path) in msg and "locked" in msg and "\n" not in msg
        assert f"process {holder.pid}" in msg
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_unknown_layer_and_label_are_clear(filled):
    path, _ = filled
    with RoutingStore(path, read_only=True) as store:
        with pytest.raises(InvalidParameterError, match=r"layer\(s\) \[1\] are not MoE layers"):
            store.load_trace(layers=[1])
        with pytest.raises(InvalidParameterError, match="labels are"):
            store.load_trace(labels=["math"])


def test_parquet_export_round_trip(filled, tmp_path):
    path, seqs = filled
    out = tmp_path / "pq"
    with RoutingStore(path) as store:
        new_run(store, "run-b", name="second")
        rng = np.random.default_rng(4)
        store.write_batch("run-b", [{"seq_id": 0, "label": "x"}], batch_of([make_seq(rng, 4, 1)]))
        db_a = store.load_trace("run-a")
        db_b = store.load_trace("run-b", phase="prefill")
        counts = export_parquet(store, "run-a", out)
        export_parquet(store, "run-a", out)  # again: replaces, no duplicates
        export_parquet(store, "second", out)
    assert counts["routes"] == db_a.num_tokens * len(LAYERS)
    pq_a = load_trace_parquet(str(out), "run-a")
    pq_b = load_trace_parquet(out, "run-b", phase="prefill")
    for got, want in ((pq_a, db_a), (pq_b, db_b)):
        for key in (
            "experts",
            "weights",
            "seq_offsets",
            "phase",
            "token_ids",
            "positions",
            "in_target",
            "seq_ids",
        ):
            np.testing.assert_array_equal(getattr(got, key), getattr(want, key), err_msg=key)
        assert got.labels.tolist() == want.labels.tolist() and got.layers == want.layers
    assert sorted(p.name for p in (out / "routes" / "run_id=run-a").iterdir()) == [
        "layer=0",
        "layer=2",
        "layer=3",
    ]
    # polars and plain duckdb read the hive layout
    frame = pl.read_parquet(out / "routes" / "**" / "*.parquet", hive_partitioning=True)
    assert frame.filter(pl.col("run_id") == "run-a").height == counts["routes"]
    n = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/tokens/*/*.parquet', hive_partitioning=true) "
        "WHERE run_id = 'run-b'"
    ).fetchall()[0][0]
    assert n == 5


def test_parquet_reader_rejects_non_export(tmp_path):
    with pytest.raises(StoreError, match="not a routescope Parquet export"):
        load_trace_parquet(str(tmp_path))
