"""The locality analyses stream (DESIGN §7): repetition, SRP (with its shuffled baseline), SCH and
every cache option give the same frame on an in-memory Trace, through a real DuckDB store, and in
chunks of any size (one sequence each, a few sequences, one chunk for everything); they read the
run only in chunks of at most `max_rows` route rows."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from routescope.analysis.cache import cache_hit_rates
from routescope.analysis.consistency import repetition_rates, sch, shuffled, srp
from routescope.core.records import BatchRouting
from routescope.core.source import InMemorySource, SourceInfo, TraceSource
from routescope.core.trace import Trace
from routescope.store.store import RoutingStore

E, K = 6, 2
LAYERS = [0, 2, 3]  # model layer 1 is dense
RUN = "run-s"
# seq_id: (prefill tokens, decode tokens, label); some sequences have no decode tokens, one has a
# single token, so phases leave sequences empty and windows do not fit everywhere
SEQS = {
    0: (5, 3, "code"),
    1: (1, 0, "prose"),
    2: (7, 0, "code"),
    3: (4, 4, None),
    4: (9, 2, "prose"),
    5: (3, 0, "code"),
    6: (6, 5, "prose"),
    7: (2, 1, "code"),
    8: (8, 0, None),
}
BATCH_SIZE = 3  # the run's recorded collection batch size (config["batch_size"])


def _sequence(rng: np.random.Generator, n: int) -> np.ndarray:
    """Experts [n, layers, k] with locality: each layer moves between a few hot experts."""
    out = np.empty((n, len(LAYERS), K), dtype=np.int16)
    for layer in range(len(LAYERS)):
        hot = rng.permutation(E)[:3]
        for t in range(n):
            if rng.random() < 0.3:
                hot = rng.permutation(E)[:3]
            pool = hot if rng.random() < 0.8 else np.arange(E)
            out[t, layer] = rng.choice(pool, K, replace=False)
    return out


def write_run(path: str, seed: int = 3) -> None:
    """The run of SEQS in a DuckDB store, written in two batches out of seq_id order."""
    rng = np.random.default_rng(seed)
    with RoutingStore(path) as store:
        store.create_or_resume_run(
            RUN,
            name="stream",
            model_id="tiny",
            family="olmoe",
            num_layers=4,
            moe_layers=LAYERS,
            num_experts=E,
            top_k=K,
            config={"batch_size": BATCH_SIZE},
        )
        for ids in ([6, 2, 0, 8], [1, 3, 4, 5, 7]):
            lengths = [SEQS[i][0] + SEQS[i][1] for i in ids]
            ex = np.concatenate([_sequence(rng, n) for n in lengths])
            batch = BatchRouting(
                seq_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
                token_ids=rng.integers(3, 40, sum(lengths)),
                positions=np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
                phase=np.concatenate(
                    [np.r_[np.zeros(SEQS[i][0]), np.ones(SEQS[i][1])] for i in ids]
                ).astype(np.uint8),
                experts=ex,
                weights=rng.random(ex.shape).astype(np.float32),
            )
            meta = [{"seq_id": i, "label": SEQS[i][2]} for i in ids]
            store.write_batch(RUN, meta, batch)
        store.finish_run(RUN)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Trace]:
    path = str(tmp_path_factory.mktemp("stream") / "s.duckdb")
    write_run(path)
    with RoutingStore(path, read_only=True) as store:
        trace = store.load_trace(RUN)
    assert trace.meta.get("batch_size") == BATCH_SIZE
    assert list(trace.seq_ids) == sorted(SEQS)
    return path, trace


def every_path(path: str, trace: Trace, fn: Callable[..., pl.DataFrame]) -> dict[str, Any]:
    """fn's frame by every route: the Trace, the store's source, and chunkings of both."""
    rows_per_token = len(LAYERS)
    out: dict[str, Any] = {
        "trace": fn(trace),
        "trace, one sequence per chunk": fn(trace, max_rows=1),
        "trace, one chunk": fn(trace, max_rows=10**9),
        "in-memory source, ~2 sequences per chunk": fn(
            InMemorySource(trace), max_rows=12 * rows_per_token
        ),
    }
    with RoutingStore(path, read_only=True) as store:
        src = store.source(RUN)
        out["store"] = fn(src)
        out["store, one sequence per chunk"] = fn(src, max_rows=1)
        out["store, ~3 sequences per chunk"] = fn(src, max_rows=17 * rows_per_token)
    return out


def assert_all_equal(frames: dict[str, pl.DataFrame]) -> pl.DataFrame:
    (first_name, first), *rest = frames.items()
    assert first.height > 0
    for name, df in rest:
        try:
            assert_frame_equal(df, first, check_exact=True)
        except AssertionError as exc:
            raise AssertionError(f"{name} differs from {first_name}: {exc}") from None
    return first


# ---- every analysis, every option that matters -----------------------------------------------------
POLICIES = [
    "lru",
    "lfu",
    "fifo",
    "static",
    "lookahead-2",
    "lookahead-16",
    "belady",
    "belady-bypass",
]

CACHE_CASES = [
    # every scope x service x start, per token, prefill and decode apart
    *(
        {"scope": scope, "service": service, "start": start}
        for scope in ("layer", "global")
        for service in ("stream", "token", "simultaneous")
        for start in ("cold", "warm")
    ),
    # batch steps: chunks must hold whole batches; sequences without decode tokens stay in them
    {"granularity": "step"},  # the run's batch size (3)
    {"granularity": "step", "batch_size": 2, "service": "token", "start": "warm"},
    {"granularity": "step", "batch_size": 4, "scope": "global", "phase": "decode"},
    {"granularity": "step", "batch_size": 2, "service": "simultaneous", "phase": "all"},
    {"granularity": "step", "batch_size": 5, "phase": "prefill", "labels": ["code", "prose"]},
    # phases and labels
    {"phase": "all"},
    {"phase": "prefill", "service": "token"},
    {"phase": "decode", "start": "warm"},
    {"labels": ["prose"], "scope": "global"},
    {"labels": ["code"], "phase": "decode", "service": "simultaneous"},
]


def _policies(case: dict) -> list[str]:
    if case.get("service") == "simultaneous":
        return [p for p in POLICIES if p != "belady-bypass"]
    return POLICIES


@pytest.mark.parametrize(
    "case", CACHE_CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
def test_cache_hit_rates_equal_on_every_path(run, case):
    path, trace = run
    fn = partial(cache_hit_rates, policies=_policies(case), **case)
    df = assert_all_equal(every_path(path, trace, fn))
    assert set(df["policy"]) == set(_policies(case))
    if case.get("phase", "split") == "split":
        assert set(df["phase"]) == {"prefill", "decode"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"phase": "decode"},
        {"phase": "prefill", "labels": ["code"]},
    ],
)
def test_repetition_equals_on_every_path(run, kwargs):
    path, trace = run
    df = assert_all_equal(every_path(path, trace, partial(repetition_rates, **kwargs)))
    assert df.filter(pl.col("layer").is_null())["pairs"][0] > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_lengths": [1, 2, 3, 5, 9]},  # L = 9 fits in few sequences, none of the decode
        {"segment_lengths": [2, 4], "shuffled_seed": 7, "phase": "decode"},
        {"segment_lengths": [3], "shuffled_seed": None, "pooled": False, "labels": ["prose"]},
        {"segment_lengths": [2], "phase": "prefill", "labels": ["code", "prose"]},
    ],
)
def test_srp_equals_on_every_path(run, kwargs):
    path, trace = run
    df = assert_all_equal(every_path(path, trace, partial(srp, **kwargs)))
    if kwargs.get("shuffled_seed", 0) is not None:
        assert df["srp_shuffled"].drop_nulls().len() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"segment_lengths": [2, 4]},
        {"segment_lengths": [2, 5], "shuffled_seed": 1, "phase": "decode"},
        {"segment_lengths": [1, 3], "kind": "lookahead"},
        {"segment_lengths": [4], "kind": "lookahead", "service": "token", "start": "warm"},
        {
            "segment_lengths": [2, 3],
            "kind": "lookahead",
            "service": "simultaneous",
            "shuffled_seed": 5,
            "phase": "prefill",
            "labels": ["code"],
        },
    ],
)
def test_sch_equals_on_every_path(run, kwargs):
    path, trace = run
    df = assert_all_equal(every_path(path, trace, partial(sch, **kwargs)))
    assert df["hit_rate"].drop_nulls().len() > 0


def test_a_phase_narrowed_store_source_gives_the_same_consistency(run):
    """The CLI passes store.source(run, phase=...): the same numbers as the phase argument."""
    path, trace = run
    with RoutingStore(path, read_only=True) as store:
        src = store.source(RUN, phase="decode", labels=["code", "prose"])
        for fn in (
            partial(repetition_rates, phase="decode", labels=["code", "prose"]),
            partial(srp, segment_lengths=[2, 3], phase="decode", labels=["code", "prose"]),
            partial(sch, segment_lengths=[2], phase="decode", labels=["code", "prose"]),
        ):
            assert_frame_equal(fn(src, max_rows=1), fn(trace), check_exact=True)


# ---- the shuffled baseline is seeded per sequence ----------------------------------------------------
def test_shuffled_baseline_depends_on_seed_and_sequence_only(run):
    _, trace = run
    whole = shuffled(trace, seed=11)
    for s in range(trace.num_sequences):
        alone = shuffled(trace.slice_sequences(s, s + 1), seed=11)
        a, b = trace.seq_offsets[s], trace.seq_offsets[s + 1]
        assert np.array_equal(alone.experts, whole.experts[a:b]), s
        assert np.array_equal(alone.weights, whole.weights[a:b])
    # another seed, another order; the same seed, the same order
    assert not np.array_equal(shuffled(trace, seed=12).experts, whole.experts)
    assert np.array_equal(shuffled(trace, seed=11).experts, whole.experts)
    # a sequence's order follows its seq_id, not its place in the run
    moved = Trace.from_sequences([trace.experts[: trace.seq_offsets[1]]], E, seq_ids=np.array([0]))
    assert np.array_equal(shuffled(moved, 11).experts, whole.experts[: trace.seq_offsets[1]])


def test_shuffled_works_without_weights(run):
    _, trace = run
    from dataclasses import replace

    bare = replace(trace, weights=None)
    assert shuffled(bare, 1).weights is None
    assert srp(bare, [2], shuffled_seed=1).equals(srp(trace, [2], shuffled_seed=1))


# ---- bounded reads ------------------------------------------------------------------------------------
class RecordingSource:
    """A source that records every chunk handed out (its sequence ids and route rows)."""

    def __init__(self, inner: TraceSource, reads: list[tuple[list[int], int]]) -> None:
        self.inner = inner
        self.reads = reads

    @property
    def info(self) -> SourceInfo:
        return self.inner.info

    def seq_lengths(self) -> np.ndarray:
        return self.inner.seq_lengths()

    def chunks(self, **kwargs: Any) -> Iterator[Trace]:
        for chunk in self.inner.chunks(**kwargs):
            self.reads.append((chunk.seq_ids.tolist(), chunk.num_tokens * chunk.num_layers))
            yield chunk

    def select(self, **kwargs: Any) -> RecordingSource:
        return RecordingSource(self.inner.select(**kwargs), self.reads)


@pytest.mark.parametrize(
    "fn, align",
    [
        (repetition_rates, 1),
        (partial(srp, segment_lengths=[2, 4]), 1),
        (partial(sch, segment_lengths=[3], kind="lookahead"), 1),
        (partial(cache_hit_rates, policies=["lru", "fifo"], scope="global"), 1),
        (partial(cache_hit_rates, policies=["belady"], granularity="step"), BATCH_SIZE),
    ],
)
def test_analyses_read_each_sequence_once_in_bounded_chunks(run, fn, align):
    _, trace = run
    reads: list[tuple[list[int], int]] = []
    max_rows = 10 * len(LAYERS)
    fn(RecordingSource(InMemorySource(trace), reads), max_rows=max_rows)
    ids = [i for chunk_ids, _ in reads for i in chunk_ids]
    assert sorted(ids) == sorted(SEQS)  # every sequence, once
    lengths = dict(zip(trace.seq_ids.tolist(), trace.seq_lengths.tolist(), strict=True))
    for chunk_ids, rows in reads:
        assert rows == sum(lengths[i] for i in chunk_ids) * len(LAYERS)  # all layers together
        assert rows <= max_rows or len(chunk_ids) <= align, (chunk_ids, rows)
    assert len(reads) > 2


# ---- property: any chunking gives the same frame ----------------------------------------------------
@st.composite
def traces(draw: st.DrawFn) -> Trace:
    e = draw(st.integers(2, 6))
    k = draw(st.integers(1, min(3, e)))
    n_layers = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    seqs, phases = [], []
    for _ in range(draw(st.integers(1, 6))):
        n_pre, n_dec = draw(st.integers(1, 8)), draw(st.integers(0, 5))
        n = n_pre + n_dec
        hot = draw(st.integers(k, e))
        seqs.append(
            np.array(
                [[rng.choice(hot, k, replace=False) for _ in range(n_layers)] for _ in range(n)]
            )
        )
        phases.append(np.r_[np.zeros(n_pre), np.ones(n_dec)])
    ids = rng.permutation(100)[: len(seqs)].astype(np.int64)
    return Trace.from_sequences(
        seqs,
        num_experts=e,
        phase=np.concatenate(phases).astype(np.uint8),
        seq_ids=ids,
        meta={"batch_size": draw(st.integers(1, 3))},
    )


PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROP
@given(
    tr=traces(),
    max_rows=st.integers(1, 60),
    scope=st.sampled_from(["layer", "global"]),
    service=st.sampled_from(["stream", "token", "simultaneous"]),
    start=st.sampled_from(["cold", "warm"]),
    granularity=st.sampled_from(["token", "step"]),
    phase=st.sampled_from(["split", "all"]),
)
def test_cache_any_chunking_same_frame(tr, max_rows, scope, service, start, granularity, phase):
    pols = [p for p in POLICIES if not (service == "simultaneous" and p == "belady-bypass")]
    fn = partial(
        cache_hit_rates,
        policies=pols,
        scope=scope,
        service=service,
        start=start,
        granularity=granularity,
        phase=phase,
    )
    assert_frame_equal(fn(tr, max_rows=max_rows), fn(tr), check_exact=True)


@PROP
@given(
    tr=traces(),
    max_rows=st.integers(1, 60),
    seg=st.integers(1, 6),
    seed=st.one_of(st.none(), st.integers(0, 2**40)),
    phase=st.sampled_from(["all", "prefill", "decode"]),
    kind=st.sampled_from(["segment-oracle", "lookahead"]),
)
def test_consistency_any_chunking_same_frame(tr, max_rows, seg, seed, phase, kind):
    for fn in (
        partial(repetition_rates, phase=phase),
        partial(srp, segment_lengths=[seg, seg + 2], shuffled_seed=seed, phase=phase),
        partial(sch, segment_lengths=[seg], kind=kind, shuffled_seed=seed, phase=phase),
    ):
        assert_frame_equal(fn(tr, max_rows=max_rows), fn(tr), check_exact=True)


# ---- the CLI reads the store through a source ----------------------------------------------------------
def test_cli_json_equals_the_library_on_the_trace(run, tmp_path):
    import shutil

    from routescope.cli import app

    path, trace = run
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(path, db)  # the CLI memoizes into the store
    runner = CliRunner()
    res = runner.invoke(
        app, ["analyze", "consistency", RUN, "--db", db, "--segments", "2,3", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    want = srp(trace, [2, 3])
    assert_frame_equal(pl.DataFrame(out["srp"], schema=want.schema), want, check_exact=True)
    args = ["analyze", "cache", RUN, "--db", db, "--granularity", "step", "--start", "warm"]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    got = pl.DataFrame(json.loads(res.output)["rows"])
    want = cache_hit_rates(trace, granularity="step", start="warm")
    assert got["hits"].to_list() == want["hits"].to_list()
    assert got["policy"].to_list() == want["policy"].to_list()


def test_cli_address_without_ray_is_one_line(run, tmp_path):
    path, _ = run
    cmd = [sys.executable, "-m", "routescope", "analyze", "cache", RUN, "--db", path]
    proc = subprocess.run(
        [*cmd, "--address", "auto"], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "--address is for --ray" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_progress_bar_counts_route_rows(run, tmp_path, monkeypatch):
    """The progress callback the CLI hands the analyses sees every route row of the run."""
    import shutil

    from routescope.cli import _analysis as cli_cons
    from routescope.cli import app

    path, trace = run
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(path, db)
    seen: dict[str, tuple[int, int]] = {}

    class Recorder(cli_cons.RowProgress):
        def task(self, what: str):  # type: ignore[override]
            return lambda done, total: seen.__setitem__(what, (done, total))

    monkeypatch.setattr(cli_cons, "RowProgress", Recorder)
    res = CliRunner().invoke(app, ["analyze", "consistency", RUN, "--db", db, "-q", "--json"])
    assert res.exit_code == 0, res.output
    rows = trace.num_tokens * len(LAYERS)
    assert seen == {"repetition": (rows, rows), "SRP": (rows, rows), "SCH": (rows, rows)}
