"""`analyze specialization`, `analyze saturation` and `localize` read the run chunk by chunk
(never the whole run at once), keep their results in the store's memo, and give the same JSON
with `--ray` as in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_experts_streaming import _seqs, _twin, _write
from typer.testing import CliRunner

from routescope.analysis import localization as lo
from routescope.analysis import specialization as sp
from routescope.cli._app import app
from routescope.store.parquet import export_parquet
from routescope.store.store import RoutingStore

LOCALIZE = ["--target", "label:code", "--control", "rest", "--n-boot", "50", "--n-perm", "80"]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "s.duckdb")
    seqs = _seqs(9)
    with RoutingStore(path) as store:
        _write(store, "run-a", seqs)
        _write(store, "run-b", _twin(seqs, 2))
    return path


def _json(args: list[str]) -> dict:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_commands_stream_and_remember(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with RoutingStore(db, read_only=True) as store:
        a = store.load_trace("run-a")
        pre_a, pre_b = store.load_trace("run-a", "prefill"), store.load_trace("run-b", "prefill")
    want_loc = lo.localize(*lo.split_labels(a, "code"), n_boot=50, n_perm=80)
    want_sat = sp.router_saturation(pre_a, pre_b)
    want_summary = sp.load_summary(a)
    want_vocab = sp.vocabulary_specialization(a, min_count=2, layers=[2])

    def whole_run(*_a: object, **_k: object) -> None:
        raise AssertionError("a command loaded the whole run")

    monkeypatch.setattr(RoutingStore, "load_trace", whole_run)
    spec_args = ["analyze", "specialization", "run-a", "--db", db, "--json", "--vocab"]
    spec = _json([*spec_args, "--layer", "2", "--min-count", "2"])
    assert spec["load_summary"] == sp.load_summary(a, layers=[2]).to_dicts()
    got_vocab = {(r["expert"], r["token_id"]): r["share"] for r in spec["vocabulary"]}
    top = sp.expert_top_tokens(want_vocab, top=5)
    assert got_vocab == {
        (r["expert"], r["token_id"]): r["share"] for r in top.iter_rows(named=True)
    }
    whole = _json(["analyze", "specialization", "run-a", "--db", db, "--json", "-q"])
    assert whole["load_summary"] == want_summary.to_dicts()
    sat = _json(["analyze", "saturation", "run-a", "run-b", "--db", db, "--json"])
    assert sat["rows"] == want_sat.to_dicts()
    loc = _json(["localize", "run-a", "--db", db, *LOCALIZE, "--json", "--top", "0"])
    assert [r["rd"] for r in loc["results"]] == want_loc["rd"].to_list()
    assert [r["ci_low"] for r in loc["results"]] == want_loc["ci_low"].to_list()
    assert [r["q_value"] for r in loc["results"]] == want_loc["q_value"].to_list()

    # A second run is served from the store: nothing is computed again.
    def computed(*_a: object, **_k: object) -> None:
        raise AssertionError("computed again")

    monkeypatch.setattr(lo, "localize", computed)
    monkeypatch.setattr(sp, "router_saturation", computed)
    monkeypatch.setattr(sp, "domain_counts", computed)
    assert _json(["localize", "run-a", "--db", db, *LOCALIZE, "--json", "--top", "0"]) == loc
    assert _json(["analyze", "saturation", "run-a", "run-b", "--db", db, "--json"]) == sat
    assert _json(["analyze", "specialization", "run-a", "--db", db, "--json", "-q"]) == whole


def test_address_without_ray_is_one_line(db: str) -> None:
    res = CliRunner().invoke(
        app, ["localize", "run-a", "--db", db, *LOCALIZE, "--address", "auto", "--json"]
    )
    assert res.exit_code != 0 and "--address is for --ray" in str(res.exception)


def test_localize_ray_equals_one_process(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray", reason="the [ray] extra is part of [dev]")
    from routescope.analysis import ray_driver

    runs: list[str] = []
    ray_run = ray_driver.RayExecutor.run

    def counted(self, source, reduction, **kw):  # noqa: ANN001, ANN003, ANN202
        runs.append(reduction.name)
        return ray_run(self, source, reduction, **kw)

    monkeypatch.setattr(ray_driver.RayExecutor, "run", counted)
    with RoutingStore(db, read_only=True) as store:
        export_parquet(store, "run-a", tmp_path / "pq")
    args = ["localize", "run-a", *LOCALIZE, "--json", "--top", "0", "--weight"]
    one = _json([*args, "--db", db])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # A Parquet export keeps no memo, so this is computed by Ray tasks.
        on_ray = _json([*args, "--db", str(tmp_path / "pq"), "--ray"])
    finally:
        ray.shutdown()
    assert runs == ["localization counts"] and on_ray == one
