"""Analysis results are cached in the store under the function and its full arguments, so the CLI
and the dashboard (which call the analyses differently) share entries."""

import polars as pl
from test_store import filled  # noqa: F401  (fixture)
from typer.testing import CliRunner

from routescope.analysis import cache, consistency
from routescope.cli._app import app
from routescope.store.results import memo_kind
from routescope.store.store import RoutingStore


def _never():
    raise AssertionError("the trace was loaded: the cached entry was not found")


def test_cli_entries_serve_the_dashboards_calls(filled):  # noqa: F811
    path, _ = filled
    runner = CliRunner()
    res = runner.invoke(
        app, ["analyze", "consistency", "run-a", "--segments", "2,3", "--db", path, "--json", "-q"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["analyze", "cache", "run-a", "--policies", "lru,belady", "--db", path, "--json", "-q"]
    )
    assert res.exit_code == 0, res.output
    with RoutingStore(path, read_only=True) as store:
        trace = store.load_trace("run-a")
        kinds = {r[0] for r in store.con.execute("SELECT kind FROM analysis_results").fetchall()}
        assert memo_kind(consistency.srp) in kinds and memo_kind(consistency.srp).endswith("@v2")
        # the dashboard's call forms (tuples, phase as a keyword, defaults left out)
        srp = store.memo_analysis(
            "run-a", consistency.srp, _never, segment_lengths=(2, 3), phase="all"
        )
        assert srp.equals(consistency.srp(trace, [2, 3]))
        rep = store.memo_analysis("run-a", consistency.repetition_rates, _never, phase="all")
        assert rep.equals(consistency.repetition_rates(trace))
        hits = store.memo_analysis(
            "run-a",
            cache.cache_hit_rates,
            _never,
            policies=("lru", "belady"),
            service="stream",
            start="cold",
        )
        assert hits.equals(cache.cache_hit_rates(trace, policies=["lru", "belady"]))
        # different arguments are a different entry
        calls = []

        def load():
            calls.append(1)
            return trace

        other = store.memo_analysis(
            "run-a", consistency.srp, load, segment_lengths=(2,), phase="all"
        )
        assert calls == [1] and isinstance(other, pl.DataFrame)


def test_specialization_entries_are_shared(filled):  # noqa: F811
    from routescope.analysis import specialization as sp

    path, _ = filled
    res = CliRunner().invoke(
        app, ["analyze", "specialization", "run-a", "--db", path, "--json", "-q"]
    )
    assert res.exit_code == 0, res.output
    sel = {"phase": "all", "layers": None}  # what the dashboard's Experts page asks for
    with RoutingStore(path, read_only=True) as store:
        trace = store.load_trace("run-a")
        for fn in (sp.expert_load, sp.load_summary, sp.domain_specialization):
            got = store.memo_analysis("run-a", fn, _never, selection=sel)
            assert got.equals(fn(trace)), fn.__name__
        # another phase is another entry
        calls = []
        store.memo_analysis(
            "run-a",
            sp.expert_load,
            lambda: calls.append(1) or trace.select_phase("prefill"),
            selection={"phase": "prefill", "layers": None},
        )
        assert calls == [1]
