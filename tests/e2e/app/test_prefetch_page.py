"""The Prefetch and offloading page in Streamlit's AppTest: its charts equal the library on the
same store, it never loads a whole run, and it keeps its results in the store's memo under the
CLI's keys (`analyze prefetch` and `simulate offload` then answer without reading routing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_app import arr, assert_clean, by_label, chart_specs, goto, open_app, sql

from routescope.analysis import offload as ol
from routescope.analysis import prefetch as pf

pytestmark = pytest.mark.e2e


def spec_titled(at, prefix: str) -> list[dict]:
    found = [s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith(prefix)]
    assert found, [s["layout"]["title"]["text"] for s in chart_specs(at)]
    return found


def trace_named(spec: dict, name: str) -> dict:
    for tr in spec["data"]:
        if tr.get("name") == name:
            return tr
    raise AssertionError(f"no trace {name!r}; have {[t.get('name') for t in spec['data']]}")


def cli_json(*args: str) -> dict:
    from typer.testing import CliRunner

    from routescope.cli import app

    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (args, res.output, repr(res.exception))
    return json.loads(res.output)


def test_prefetch_page_matches_the_library_and_shares_the_memo(store_copy, monkeypatch):
    from routescope.models.costs import run_cost
    from routescope.store.reader import StoreReader
    from routescope.store.source import StoreSource
    from routescope.store.store import RoutingStore

    db, run_id, k = store_copy["db"], store_copy["run_id"], store_copy["top_k"]

    def no_whole_run(*args, **kwargs):
        raise AssertionError("the page loaded a whole run")

    monkeypatch.setattr(StoreReader, "load_trace", no_whole_run)
    at = goto(open_app(db, monkeypatch), "prefetch")
    assert at.title[0].value == "Prefetch and offloading"

    with RoutingStore(db, read_only=True) as store:
        recall = pf.prefetch_recall(store.source(run_id))
        cost = run_cost(store.run_info(run_id))
        what_if = ol.offload_whatif(store.source(run_id), cost)
    phase = by_label(at.selectbox, "Phase").value
    # recall by layer at m = k: each predictor's line is the library's per-layer recall
    (by_layer,) = spec_titled(at, f"Prefetch recall@{k} by layer")
    for name in ("previous-token", "oracle"):
        rows = recall.filter(
            (recall["predictor"] == name)
            & (recall["width"] == k)
            & (recall["phase"] == phase)
            & recall["layer"].is_not_null()
        ).sort("layer")
        tr = trace_named(by_layer, name)
        assert arr(tr["x"]).tolist() == rows["layer"].to_list()
        assert np.allclose(arr(tr["y"]).astype(float), rows["recall"].to_numpy())
    assert np.all(arr(trace_named(by_layer, "oracle")["y"]) == 1.0)
    spec_titled(at, f"Prefetch recall@{k} by distance")
    # tokens/s against memory, one chart per phase; the ceiling is the compute-bound limit
    charts = spec_titled(at, "Offloading what-if")
    assert len(charts) == len(what_if["phase"].unique())
    for spec in charts:
        lim = what_if.filter((what_if["kind"] == "limit") & (what_if["policy"] == "all-resident"))
        ceiling = trace_named(spec, "all resident (compute bound)")
        assert float(arr(ceiling["y"])[0]) == pytest.approx(lim["tokens_per_s"][0])
        lru = trace_named(spec, "lru, cache only")
        assert np.all(np.diff(arr(lru["x"]).astype(float)) > 0)  # more memory to the right
    table = at.dataframe[1].value
    assert set(table["policy"]) >= {"lru", "lfu", "belady", "all-resident", "no-cache"}

    kinds = {
        k_ for (k_,) in sql(db, "SELECT kind FROM analysis_results WHERE run_id = ?", [run_id])
    }
    assert "routescope.analysis.prefetch.prefetch_recall" in kinds, kinds
    assert "routescope.analysis.offload.offload_whatif" in kinds, kinds

    # the CLI answers from the page's results: the run's routing cannot be read any more
    def unreadable(*args, **kwargs):
        raise AssertionError("routing was read although the result is in the memo")

    monkeypatch.setattr(StoreSource, "read", unreadable)
    got = cli_json("analyze", "prefetch", run_id, "--db", db, "--json")
    assert len(got["rows"]) == recall.height
    pooled = {
        (r["phase"], r["predictor"], r["width"]): r["recall"]
        for r in got["rows"]
        if r["layer"] is None
    }
    want = recall.filter(recall["layer"].is_null())
    for r in want.to_dicts():
        assert pooled[(r["phase"], r["predictor"], r["width"])] == pytest.approx(r["recall"])
    sim = cli_json("simulate", "offload", run_id, "--db", db, "--json")
    assert [r["tokens_per_s"] for r in sim["rows"]] == pytest.approx(
        what_if["tokens_per_s"].to_list()
    )


def test_prefetch_page_controls(fixture_store, monkeypatch):
    at = goto(open_app(fixture_store["db"], monkeypatch), "prefetch")
    by_label(at.multiselect, "Policies").set_value(["lru"]).run()
    by_label(at.multiselect, "Predictors (prefetch)").set_value(["oracle"]).run()
    assert_clean(at)
    (chart, *_) = spec_titled(at, "Offloading what-if")
    names = {tr["name"] for tr in chart["data"]}
    assert names == {
        "lru, cache only",
        f"lru + oracle (m={fixture_store['top_k']})",
        "all resident (compute bound)",
        "no cache",
    }
    # a slower link: the no-cache limit falls
    before = float(arr(trace_named(chart, "no cache")["y"])[0])
    by_label(at.number_input, "Host→GPU GB/s").set_value(5.0).run()
    assert_clean(at)
    (chart, *_) = spec_titled(at, "Offloading what-if")
    assert float(arr(trace_named(chart, "no cache")["y"])[0]) < before
    # fewer predictors and one width in the recall charts
    by_label(at.multiselect, "Predictors").set_value(["previous-token", "oracle"]).run()
    by_label(at.multiselect, "Widths m").set_value([fixture_store["top_k"]]).run()
    assert_clean(at)
    (by_layer,) = spec_titled(at, f"Prefetch recall@{fixture_store['top_k']} by layer")
    assert {tr["name"] for tr in by_layer["data"]} == {"previous-token", "oracle", "chance (m/E)"}
