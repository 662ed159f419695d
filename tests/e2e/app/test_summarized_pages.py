"""After `routescope summarize`, the analysis pages render from the store's memo without computing
anything: with the run's routing unreadable and every analysis function failing, each page draws
its charts, shows no progress bar and adds nothing to the memo (its keys are summarize's)."""

from __future__ import annotations

import sys

import pytest
from test_app import assert_clean, chart_specs, goto, open_app, sql

pytestmark = pytest.mark.e2e

#: page → charts it draws with its defaults on the fixture store (at least)
CHARTS = {"experts": 4, "locality": 3, "prefetch": 3, "localization": 1}


def _memo(db: str, run_id: str) -> set[tuple[str, str]]:
    return set(sql(db, "SELECT kind, params_key FROM analysis_results WHERE run_id = ?", [run_id]))


def test_pages_render_from_summarize_without_computing(store_copy, monkeypatch):
    from typer.testing import CliRunner

    from routescope.analysis import cache, consistency, localization, offload, prefetch
    from routescope.analysis import specialization as sp
    from routescope.cli import app
    from routescope.store.reader import StoreReader
    from routescope.store.source import StoreSource

    db, run_id = store_copy["db"], store_copy["run_id"]
    import duckdb

    con = duckdb.connect(db)  # other tests' pages may have filled the fixture's memo
    con.execute("DELETE FROM analysis_results")
    con.close()
    res = CliRunner().invoke(app, ["summarize", run_id, "--db", db, "-q"])
    assert res.exit_code == 0, (res.output, repr(res.exception))
    summarized = _memo(db, run_id)
    assert summarized

    def fail(*args, **kwargs):
        raise AssertionError("a page computed although summarize filled the memo")

    monkeypatch.setattr(StoreSource, "read", fail)
    monkeypatch.setattr(StoreReader, "load_trace", fail)
    for module, names in (
        (consistency, ("srp", "sch", "repetition_rates")),
        (cache, ("cache_hit_rates",)),
        (sp, ("domain_counts", "vocabulary_specialization", "coactivation")),
        (prefetch, ("prefetch_recall",)),
        (offload, ("offload_whatif",)),
        (localization, ("localize", "token_sets_from_specs")),
    ):
        for name in names:  # the memo's keys are read off the real functions first
            monkeypatch.setattr(module, name, _failing(getattr(module, name)))

    at = open_app(db, monkeypatch)
    shared = sys.modules["_shared"]
    shared._RESULTS.clear()  # nothing kept from other tests' servers
    progress: list[str] = []
    real_call = shared.ProgressBar.__call__

    def spy(self, done, total):
        progress.append(self.what)
        return real_call(self, done, total)

    monkeypatch.setattr(shared.ProgressBar, "__call__", spy)
    for page, charts in CHARTS.items():
        goto(at, page)
        assert_clean(at)
        assert len(chart_specs(at)) >= charts, (page, len(chart_specs(at)))
    assert progress == []
    assert _memo(db, run_id) == summarized  # the pages asked for summarize's keys only


def _failing(fn):
    """fn's stand-in with its name and signature (the memo key is read off them) that fails."""
    import functools

    @functools.wraps(fn)
    def call(*args, **kwargs):
        raise AssertionError(f"{fn.__qualname__} was computed by a page")

    return call
