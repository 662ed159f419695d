"""`routescope summarize`: it fills the store's memo with exactly the results the dashboard's pages
ask for by default (`routescope.analysis.summary`), under the keys the CLI's analyze commands use
(they then answer without reading routing); a second summarize computes nothing; `collect` and
`import` run it unless --no-summarize."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from test_import_driver import npy_b64, routed
from test_store import LABELS, batch_of, make_seq, new_run
from typer.testing import CliRunner

from routescope.analysis import summary
from routescope.cli._app import app
from routescope.core.canonical import canonical_json
from routescope.store.store import RoutingStore

RUN = "run-a"


@pytest.fixture
def db(tmp_path: Path) -> str:
    """One labelled run (code, prose) of 10 sequences with decode tokens and target spans."""
    rng = np.random.default_rng(3)
    seqs = [make_seq(rng, 6 + i % 3, 2 * (i % 2)) for i in range(10)]
    path = str(tmp_path / "s.duckdb")
    with RoutingStore(path) as store:
        new_run(store, RUN)
        meta = [
            {"seq_id": i, "prompt_set": "set", "prompt_id": f"p{i}", "label": LABELS[i % 5]}
            for i in range(10)
        ]
        in_target = np.concatenate([s["in_target"] for s in seqs])
        store.write_batch(RUN, meta, batch_of(seqs), {i: f"t{i}" for i in range(60)}, in_target)
        store.finish_run(RUN)
    return path


def invoke(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (args, res.output, repr(res.exception))
    return res.output


def stored_keys(db: str) -> set[tuple[str, str]]:
    with RoutingStore(db, read_only=True) as store:
        rows = store.con.execute(
            "SELECT kind, params_key FROM analysis_results WHERE run_id = ?", [RUN]
        ).fetchall()
    return {(k, p) for k, p in rows}


def default_keys(db: str) -> set[tuple[str, str]]:
    """The memo keys of every page's default results, as `PageResult.key()` gives them."""
    from functools import partial

    from routescope.models.costs import run_cost

    with RoutingStore(db, read_only=True) as store:
        info = store.source(RUN).info
        cost = summary.default_cost(partial(run_cost, store.run_info(RUN)))[0]
    items = summary.page_defaults(info, cost=cost, has_target=True)
    assert {i.page for i in items} == set(summary.PAGES)
    keys = set()
    for item in items:
        kind, params = item.key()
        keys.add((kind, hashlib.sha256(canonical_json(params).encode()).hexdigest()))
    return keys


def test_summarize_fills_the_pages_keys_that_the_cli_answers_from(db, monkeypatch):
    from routescope.store.source import StoreSource

    assert stored_keys(db) == set()
    out = invoke("summarize", RUN, "--db", db)
    assert "localization ranking" in out and "locality cache" in out
    # exactly the pages' default results (the shared counts pass is no result of its own)
    assert stored_keys(db) == default_keys(db)

    # the CLI's analyze commands at their defaults (the pages' defaults) answer from the memo
    def unreadable(*args, **kwargs):
        raise AssertionError("routing was read although the result is in the memo")

    monkeypatch.setattr(StoreSource, "read", unreadable)
    for args in (
        ["analyze", "consistency", RUN],
        ["analyze", "cache", RUN],
        ["analyze", "specialization", RUN],
        ["analyze", "prefetch", RUN],
        # no model config for this run: the page's stand-in cost, given as flags
        ["simulate", "offload", RUN, "--expert-mb", "12.58", "--layer-ms", "0.134"],
        ["localize", RUN, "--target", "label:code", "--control", "rest"]
        + ["--n-boot", "200", "--n-perm", "200"],
    ):
        json.loads(invoke(*args, "--db", db, "--json"))

    # a second summarize finds everything in the memo and computes nothing
    from routescope.cli.summarize import summarize_run

    done = summarize_run(db, RUN, quiet=True)
    assert len(done) == len(default_keys(db)) and not any(d.computed for d in done)
    assert "in the memo" in invoke("summarize", RUN, "--db", db, "--pages", "locality")


def test_summarize_pages_option_and_user_errors(db, tmp_path):
    invoke("summarize", RUN, "--db", db, "--pages", "locality,experts", "-q")
    kinds = {k.split("@")[0].rsplit(".", 1)[-1] for k, _ in stored_keys(db)}
    assert {"srp", "sch", "repetition_rates", "cache_hit_rates", "expert_load"} <= kinds
    assert not kinds & {"prefetch_recall", "offload_whatif", "localize"}
    for args, message in (
        (["--pages", "locality,tokens"], "pages tokens: choose among experts, locality"),
        (["--db", str(tmp_path / "none.duckdb")], "none.duckdb"),
    ):
        res = CliRunner().invoke(app, ["summarize", RUN, "--db", db, *args])
        assert res.exit_code != 0
        assert message in str(res.exception), res.exception


def test_import_summarizes_unless_asked_not_to(tmp_path):
    resp = {
        "prompt_token_ids": [10, 11, 12, 13],
        "prompt_routed_experts": npy_b64(routed(4, 2, 2)),
        "choices": [{"token_ids": [14, 15], "routed_experts": npy_b64(routed(2, 2, 2, seed=1))}],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(resp))
    base = ["import", "vllm", str(path), "--num-experts", "8", "--top-k", "2", "-q"]
    db_off, db_on = str(tmp_path / "off.duckdb"), str(tmp_path / "on.duckdb")
    invoke(*base, "--db", db_off, "--name", "x", "--no-summarize")
    invoke(*base, "--db", db_on, "--name", "x")
    count = "SELECT count(*) FROM analysis_results"
    with RoutingStore(db_off, read_only=True) as store:
        assert store.con.execute(count).fetchall()[0][0] == 0
    with RoutingStore(db_on, read_only=True) as store:
        kinds = {k for (k,) in store.con.execute("SELECT kind FROM analysis_results").fetchall()}
    assert any(k.endswith("cache_hit_rates") for k in kinds), kinds
    assert any(k.endswith("offload_whatif") for k in kinds), kinds


def test_collect_summarizes_a_complete_run_unless_asked_not_to(tmp_path, monkeypatch):
    """The flag's wiring (the collection itself is stubbed: collect's own tests run models)."""
    import routescope.cli.summarize as summarize_mod
    import routescope.collect.runner as runner

    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(
        summarize_mod, "summarize_run", lambda db, run, **kw: calls.append((db, run))
    )

    def fake_run_job(job, quiet=False, steering=None):  # noqa: ANN001, ANN202
        return runner.RunResult(job.run_id, job.db, 1, 0, 1, 3, 6, 0.1, "complete")

    monkeypatch.setattr(runner, "run_job", fake_run_job)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "a b c"}\n')
    db = str(tmp_path / "c.duckdb")
    invoke("collect", "--prompts", str(prompts), "--db", db, "--name", "c", "-q")
    assert calls == [(db, "c")]
    invoke("collect", "--prompts", str(prompts), "--db", db, "--name", "c", "-q", "--no-summarize")
    assert calls == [(db, "c")]
