"""The dashboard in Streamlit's AppTest: every page against a store collected with the real
pipeline; the numbers on the charts are checked against plain DuckDB queries of the same store;
annotations and presets are saved, edited and deleted through the widgets."""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pages as manifest  # app/pages.py (conftest puts app/ on sys.path)
import pytest

pytestmark = pytest.mark.e2e

MAIN = Path(__file__).resolve().parents[3] / "app" / "main.py"

#: key → script (relative to app/) of every page with a script, from the app's page table
PAGES = manifest.scripts()


def open_app(db: str, monkeypatch: pytest.MonkeyPatch):
    """The app over `db` (passed as `routescope app --db` does, in $ROUTESCOPE_DB), run once."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROUTESCOPE_DB", db)
    at = AppTest.from_file(str(MAIN), default_timeout=120)
    at.run()
    return at


def goto(at, page: str):
    at.switch_page(PAGES[page])
    at.run()
    assert_clean(at)
    return at


def assert_clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def arr(value) -> np.ndarray:
    """A plotly JSON array: a plain list, or plotly's typed-array form {dtype, bdata, shape}."""
    if isinstance(value, dict) and "bdata" in value:
        import base64

        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        if "shape" in value:
            shape = value["shape"]
            shape = [int(x) for x in shape.split(",")] if isinstance(shape, str) else shape
            out = out.reshape(shape)
        return out
    return np.array(value, dtype=object if value and isinstance(value[0], str) else None)


def chart_specs(at) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def chart_titles(at) -> list[str]:
    return [s["layout"]["title"]["text"] for s in chart_specs(at)]


def by_label(widgets, label: str):
    found = [w for w in widgets if w.label == label]
    assert found, f"no widget labelled {label!r}; have {[w.label for w in widgets]}"
    return found[0]


def sql(db: str, q: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(db, read_only=True)
    try:
        return con.execute(q, params or []).fetchall()
    finally:
        con.close()


# ---- the page table ------------------------------------------------------------------------------
def test_page_table_is_consistent_and_matches_the_readme():
    manifest.check()
    assert manifest.page("start").default and manifest.page("start").switch_to == "runs"
    # the README's page table lists the sidebar's pages, in order
    readme = (MAIN.parent / "README.md").read_text(encoding="utf-8").splitlines()
    start = readme.index("| page | shows |")
    rows = []
    for line in readme[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    assert rows == [p.title for p in manifest.visible()]


# ---- every page renders, with the expected widgets and charts ----------------------------------
def test_runs_page_lists_the_run(fixture_store, monkeypatch):
    at = open_app(fixture_store["db"], monkeypatch)
    # first run: the entry script's sidebar (database, run) and the default page, Runs
    assert at.text_input(key="_db_widget").value == fixture_store["db"]
    assert at.selectbox(key="_run_widget").value == fixture_store["run_id"]
    assert [t.value for t in at.title][0] == "Runs"
    goto(at, "runs")
    table = at.dataframe[0].value
    assert table["run_id"].tolist() == [fixture_store["run_id"]]
    assert int(table["tokens"][0]) == sql(fixture_store["db"], "SELECT count(*) FROM tokens")[0][0]
    assert int(table["E"][0]) == fixture_store["num_experts"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["tokens"] == f"{fixture_store['tokens']:,}"


def test_tokens_page_colours_and_heatmap_match_the_store(fixture_store, monkeypatch):
    db, run_id = fixture_store["db"], fixture_store["run_id"]
    at = goto(open_app(db, monkeypatch), "tokens")
    layers = fixture_store["layers"]
    seq_id = sql(db, "SELECT min(seq_id) FROM sequences WHERE run_id = ?", [run_id])[0][0]
    rows = sql(
        db,
        "SELECT pos, layer, experts, weights FROM routes WHERE run_id = ? AND seq_id = ? "
        "ORDER BY pos, layer",
        [run_id, seq_id],
    )
    n_pos = len({r[0] for r in rows})
    top1 = np.array([r[2][0] for r in rows]).reshape(n_pos, len(layers))
    (spec,) = chart_specs(at)
    heat = spec["data"][0]
    assert heat["type"] == "heatmap"
    assert np.array_equal(arr(heat["z"]), top1.T)  # [layer, token] = top-1 expert id
    # hover on a cell: its layer's experts and weights (the cell's text), then every layer's
    # (the token's x value, stored once per token, shown by the hover template)
    pos, layer, experts, weights = rows[-1]
    cell = heat["text"][len(layers) - 1][n_pos - 1]
    assert cell.startswith(f"<b>layer {layer}: e{experts[0]} {weights[0]:.2f}")
    listing = heat["x"][n_pos - 1]
    assert listing.startswith(f"pos {n_pos - 1} ")
    for lay in layers:
        assert f"L{lay}: " in listing
    assert f"L{layer}: e{experts[0]} {weights[0]:.2f}" in listing
    assert heat["hovertemplate"] == "%{text}<br>%{x}<extra></extra>"

    # the coloured text: one span per token, in the colour of its top-1 expert at the chosen layer
    from routescope.analysis.figures_app import expert_colors

    layer_box = by_label(at.selectbox, "Layer")
    body = at.get("html")[0].proto.body
    assert body.count('class="rs-tok"') == n_pos
    chosen = layers.index(int(layer_box.value))
    colors = expert_colors(fixture_store["num_experts"])
    first_span = body.split('class="rs-tok"', 2)[1]
    assert f"background:{colors[top1[0, chosen]]}" in first_span

    # another layer recolours the text
    other = layers[0] if int(layer_box.value) != layers[0] else layers[-1]
    layer_box.set_value(other).run()
    assert_clean(at)
    first_span = at.get("html")[0].proto.body.split('class="rs-tok"', 2)[1]
    assert f"background:{colors[top1[0, layers.index(other)]]}" in first_span


def test_tokens_page_reads_one_sequence(store_copy, monkeypatch):
    """The Tokens page reads the picked sequence only: every routing read the page makes is one
    sequence, token strings are asked for that sequence's ids only, and the page renders even
    when every other sequence's routing is gone from the store."""
    from routescope.store.reader import StoreReader
    from routescope.store.source import StoreSource

    db, run_id = store_copy["db"], store_copy["run_id"]
    seq_ids = [
        r[0] for r in sql(db, "SELECT seq_id FROM sequences WHERE run_id = ? ORDER BY 1", [run_id])
    ]
    first, second = seq_ids[0], seq_ids[1]
    con = duckdb.connect(db)  # only the first two sequences keep their routing
    con.execute("DELETE FROM routes WHERE run_id = ? AND seq_id > ?", [run_id, second])
    con.close()
    reads: list[list[int]] = []
    asked: list[list[int] | None] = []
    real_read, real_strings = StoreSource.read, StoreReader.token_strings

    def spy_read(self, start, stop, layers=None):
        trace = real_read(self, start, stop, layers)
        reads.append([int(x) for x in trace.seq_ids])
        return trace

    def spy_strings(self, run=None, token_ids=None):
        asked.append(None if token_ids is None else sorted(int(t) for t in token_ids))
        return real_strings(self, run, token_ids)

    monkeypatch.setattr(StoreSource, "read", spy_read)
    monkeypatch.setattr(StoreReader, "token_strings", spy_strings)
    at = goto(open_app(db, monkeypatch), "tokens")
    assert reads == [[first]], reads
    ids_of = lambda s: sorted(  # noqa: E731
        {
            r[0]
            for r in sql(
                db, "SELECT token_id FROM tokens WHERE run_id = ? AND seq_id = ?", [run_id, s]
            )
        }
    )
    assert asked == [ids_of(first)]
    (spec,) = chart_specs(at)
    n_first = sql(
        db, "SELECT count(*) FROM tokens WHERE run_id = ? AND seq_id = ?", [run_id, first]
    )
    assert arr(spec["data"][0]["z"]).shape == (len(store_copy["layers"]), n_first[0][0])
    # another sequence: one more read, of that sequence only
    by_label(at.selectbox, "Sequence").set_value(second).run()
    assert_clean(at)
    assert reads == [[first], [second]] and asked[-1] == ids_of(second)
    # a sequence whose routing is gone is an error about that sequence, on that page only
    by_label(at.selectbox, "Sequence").set_value(seq_ids[-1]).run()
    assert not at.exception and at.error and "inconsistent" in at.error[0].value
    assert all(len(r) == 1 for r in reads), reads


def test_experts_page_charts_match_the_store(fixture_store, monkeypatch):
    db, run_id = fixture_store["db"], fixture_store["run_id"]
    e, k = fixture_store["num_experts"], fixture_store["top_k"]
    at = goto(open_app(db, monkeypatch), "experts")
    titles = chart_titles(at)
    assert any(t.startswith("Expert load") for t in titles)
    assert any(t.startswith("Load entropy") for t in titles)
    assert any(t.startswith("Domain specialization") for t in titles)
    assert any(t.startswith("Co-activation") for t in titles)
    specs = {s["layout"]["title"]["text"].split(" ")[0]: s for s in chart_specs(at)}
    n_tok = sql(db, "SELECT count(*) FROM tokens WHERE run_id = ?", [run_id])[0][0]
    counts = sql(
        db,
        "SELECT layer, expert, count(*) FROM route_choices WHERE run_id = ? GROUP BY ALL",
        [run_id],
    )
    ref = np.zeros((len(fixture_store["layers"]), e))
    for layer, expert, c in counts:
        ref[fixture_store["layers"].index(layer), expert] = c / (n_tok * k)
    assert np.allclose(arr(specs["Expert"]["data"][0]["z"]).astype(float), ref)
    # entropy per layer: −Σ s log s / log E of the same shares
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(ref > 0, ref * np.log(ref), 0), axis=1) / np.log(e)
    assert np.allclose(arr(specs["Load"]["data"][0]["y"]).astype(float), ent)
    assert len(at.dataframe) >= 1  # top tokens of the chosen expert


def test_locality_page_draws_srp_sch_and_cache_curves(fixture_store, monkeypatch):
    at = goto(open_app(fixture_store["db"], monkeypatch), "locality")
    titles = chart_titles(at)
    assert any(t.startswith("Segment Routing best Performance") for t in titles)
    assert any(t.startswith("Segment Cache best Hit rate") for t in titles)
    cache = [s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Expert-cache")]
    assert {s["layout"]["title"]["text"].split(", ")[1] for s in cache} == {"prefill", "decode"}
    for spec in cache:
        names = [tr["name"] for tr in spec["data"]]
        assert "belady (bound)" in names and "lru" in names
        belady = next(tr for tr in spec["data"] if tr["name"] == "belady (bound)")
        assert belady["line"]["dash"] == "dash"
        # Belady is the optimum of admitting policies under stream service: never below LRU/FIFO
        for tr in spec["data"]:
            if tr["name"] in ("lru", "fifo", "lfu"):
                assert np.all(arr(belady["y"]) >= arr(tr["y"]) - 1e-12)
        # hit rate at C = E is 1 minus compulsory misses: positive, at most 1
        assert 0 < arr(belady["y"])[-1] <= 1
    # per layer instead of pooled
    by_label(at.selectbox, "Layer").set_value(fixture_store["layers"][0]).run()
    assert_clean(at)
    assert any(f"layer {fixture_store['layers'][0]}" in t for t in chart_titles(at))


def test_localization_page_ranks_against_plain_counts(fixture_store, monkeypatch):
    db, run_id = fixture_store["db"], fixture_store["run_id"]
    at = goto(open_app(db, monkeypatch), "localization")
    by_label(at.selectbox, "Target").set_value("label:code").run()
    by_label(at.selectbox, "Control").set_value("label:prose").run()
    assert_clean(at)
    ranking = at.dataframe[0].value
    assert list(ranking["rank"][:3]) == [1, 2, 3]
    assert (np.diff(ranking["score"].to_numpy()) <= 1e-12).all()  # sorted by score
    top = ranking.iloc[0]
    # p1, p2 of the top expert from plain SQL: share of code / prose tokens that selected it
    q = """
        SELECT s.label, count(*) FILTER (WHERE list_contains(r.experts, ?)) / count(*)
        FROM routes r JOIN sequences s USING (run_id, seq_id)
        WHERE r.run_id = ? AND r.layer = ? GROUP BY s.label"""
    shares = dict(sql(db, q, [int(top["expert"]), run_id, int(top["layer"])]))
    assert top["p1"] == pytest.approx(shares["code"])
    assert top["p2"] == pytest.approx(shares["prose"])
    assert top["rd"] == pytest.approx(shares["code"] - shares["prose"])
    assert top["ci_low"] <= top["score"] + 1e-9 and 0 <= top["q_value"] <= 1
    assert chart_titles(at)[0].startswith("Risk difference")


def _cli(*args: str):
    from typer.testing import CliRunner

    from routescope.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (args, result.output, repr(result.exception))
    return json.loads(result.output)


def test_analysis_pages_compute_once_into_the_memo_the_cli_shares(store_copy, monkeypatch):
    """Experts, Locality and Localization stream the run (never a whole-run load), show progress
    while they compute, and keep each result in the store's memo under the CLI's keys: afterwards
    the CLI and a fresh app answer with the run's routing unreadable, and show no progress."""
    from routescope.store.reader import StoreReader
    from routescope.store.source import StoreSource

    db, run_id = store_copy["db"], store_copy["run_id"]
    con = duckdb.connect(db)  # other tests' pages may have filled the fixture's memo
    con.execute("DELETE FROM analysis_results")
    con.close()

    def no_whole_run(*args, **kwargs):
        raise AssertionError("a page loaded a whole run")

    monkeypatch.setattr(StoreReader, "load_trace", no_whole_run)
    progress: list[tuple[str, int, int]] = []
    at = open_app(db, monkeypatch)
    bar = sys.modules["_shared"].ProgressBar
    real_call = bar.__call__

    def spy(self, done, total):
        progress.append((self.what, done, total))
        return real_call(self, done, total)

    monkeypatch.setattr(bar, "__call__", spy)
    shown = {}
    for page in ("experts", "locality", "localization"):
        goto(at, page)
        shown[page] = chart_specs(at)
    whats = {w for w, _, _ in progress}
    for what in ("Counting expert load", "SRP", "SCH", "Simulating expert caches"):
        assert what in whats, whats
    assert any(w.startswith("Localizing") and d == t > 0 for w, d, t in progress), progress
    kinds = {  # the analysis's name (a version may follow an @)
        k.split("@")[0]
        for (k,) in sql(db, "SELECT kind FROM analysis_results WHERE run_id = ?", [run_id])
    }
    assert {"localize", "routescope.analysis.consistency.srp"} <= kinds, kinds
    assert "routescope.analysis.specialization.expert_load" in kinds, kinds
    assert "routescope.analysis.cache.cache_hit_rates" in kinds, kinds

    # from now on the run's routing cannot be read: only stored results can answer
    def unreadable(*args, **kwargs):
        raise AssertionError("routing was read although the result is in the memo")

    monkeypatch.setattr(StoreSource, "read", unreadable)
    srp = _cli("analyze", "consistency", run_id, "--db", db, "--json")  # the CLI's defaults
    pooled = [r for r in srp["srp"] if r["layer"] is None]
    chart = next(s for s in shown["locality"] if s["layout"]["title"]["text"].startswith("Segm"))
    got = [r["srp"] for r in sorted(pooled, key=lambda r: r["segment_length"])]
    want = [None if v is None else float(v) for v in chart["data"][0]["y"]]
    assert len(got) == len(want) == 4
    assert [g is None for g in got] == [w is None for w in want]
    assert [g for g in got if g is not None] == pytest.approx([w for w in want if w is not None])
    _cli("analyze", "cache", run_id, "--db", db, "--json")
    _cli("analyze", "specialization", run_id, "--db", db, "--json")
    ranked = _cli("localize", run_id, "--db", db, "--target", "label:code", "--control", "rest",
                  "--n-boot", "200", "--n-perm", "200", "--json")  # fmt: skip
    ranking = at.dataframe[0].value  # the Localization page's table (label:code vs rest)
    assert [(r["layer"], r["expert"]) for r in ranked["results"][:5]] == [
        (int(r.layer), int(r.expert)) for r in ranking.head(5).itertuples()
    ]
    # a fresh server process (nothing kept in memory) answers from the memo, without progress
    sys.modules["_shared"]._RESULTS.clear()
    progress.clear()
    at = open_app(db, monkeypatch)
    for page in ("experts", "locality", "localization"):
        goto(at, page)
        assert len(chart_specs(at)) == len(shown[page]), page
    assert progress == []


def test_sql_page_runs_named_and_free_queries(fixture_store, monkeypatch):
    db, run_id = fixture_store["db"], fixture_store["run_id"]
    at = goto(open_app(db, monkeypatch), "sql")
    names = by_label(at.selectbox, "Query").options
    assert any(n.startswith("expert_load") for n in names)
    by_label(at.selectbox, "Query").set_value("runs").run()
    at.button(key="run_named").click().run()
    assert_clean(at)
    assert at.dataframe[0].value["run_id"].tolist() == [run_id]
    assert at.get("download_button")
    at.text_area(key="free_sql").set_value(
        "SELECT layer, count(*) AS n FROM routes GROUP BY layer ORDER BY layer"
    ).run()
    at.button(key="run_free").click().run()
    assert_clean(at)
    got = at.dataframe[-1].value
    ref = sql(db, "SELECT layer, count(*) FROM routes GROUP BY layer ORDER BY layer")
    assert [tuple(int(v) for v in r) for r in got.itertuples(index=False)] == ref
    # the editor is read-only: a write is refused with one line, not a traceback
    at.text_area(key="free_sql").set_value("DELETE FROM routes").run()
    at.button(key="run_free").click().run()
    assert not at.exception and at.error
    msg = at.error[0].value
    assert "refus" in msg.lower() or "read-only" in msg.lower()
    assert sql(db, "SELECT count(*) FROM routes")[0][0] == sum(r[1] for r in ref)


# ---- writing through the app: annotations and presets -----------------------------------------
def test_annotation_is_saved_and_shown_where_the_expert_appears(store_copy, monkeypatch):
    db, model_id, run_id = store_copy["db"], store_copy["model_id"], store_copy["run_id"]
    at = goto(open_app(db, monkeypatch), "experts")
    layer = int(by_label(at.selectbox, "Layer").value)
    # annotate the expert that the first token of the first sequence picks first at this layer
    ex = sql(
        db,
        "SELECT experts[1] FROM routes WHERE run_id = ? AND layer = ? ORDER BY seq_id, pos LIMIT 1",
        [run_id, layer],
    )[0][0]
    at.number_input(key="expert_id").set_value(ex).run()
    at.text_input(key=f"note_label_{layer}_{ex}").set_value("digits")
    at.text_area(key=f"note_text_{layer}_{ex}").set_value("fires on numbers")
    [b for b in at.button if b.label == "Save annotation"][0].click().run()
    assert_clean(at)
    assert [s.value for s in at.success] == [f"Saved the annotation of layer {layer}, expert {ex}."]
    assert sql(db, "SELECT model_id, layer, expert, label, note FROM expert_notes") == [
        (model_id, layer, ex, "digits", "fires on numbers")
    ]
    assert any(h.value.endswith("— digits") for h in at.subheader)
    load = next(s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Expert"))
    row = list(arr(load["data"][0]["y"])).index(str(layer))
    assert load["data"][0]["text"][row][ex].endswith("note: digits")
    assert "note:" not in load["data"][0]["text"][row][(ex + 1) % store_copy["num_experts"]]
    domain = next(s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Domain"))
    assert all(r[ex].endswith("note: digits") for r in domain["data"][0]["text"])
    # shown on the Tokens page too, in the hover of the token routed to that expert
    goto(at, "tokens")
    by_label(at.selectbox, "Layer").set_value(layer).run()
    heat = chart_specs(at)[0]["data"][0]
    cell = heat["text"][store_copy["layers"].index(layer)][0]
    assert f"layer {layer}: e{ex} " in cell and "[digits]" in cell
    assert 'title="pos 0' in at.get("html")[0].proto.body
    assert "[digits]" in at.get("html")[0].proto.body
    # a second save edits the same row
    goto(at, "experts")
    at.number_input(key="expert_id").set_value(ex).run()
    at.text_input(key=f"note_label_{layer}_{ex}").set_value("numbers")
    [b for b in at.button if b.label == "Save annotation"][0].click().run()
    assert sql(db, "SELECT label FROM expert_notes") == [("numbers",)]


def _preset_rows(db: str) -> list[tuple[str, dict]]:
    return [
        (name, json.loads(spec))
        for name, spec in sql(db, "SELECT name, spec FROM steering_presets ORDER BY name")
    ]


def test_presets_are_created_edited_and_deleted(store_copy, monkeypatch):
    db = store_copy["db"]
    l0, l1 = store_copy["layers"][0], store_copy["layers"][-1]
    at = goto(open_app(db, monkeypatch), "steering")
    assert by_label(at.selectbox, "Preset to edit").value == "(new preset)"
    at.text_input(key="pname_new").set_value("quiet-code")
    at.multiselect(key="poff_new").set_value([f"L{l0}/e1", f"L{l1}/e2"])
    [b for b in at.button if b.label == "Create preset"][0].click().run()
    assert_clean(at)
    rows = _preset_rows(db)
    assert [r[0] for r in rows] == ["quiet-code"]
    edits = sorted((e["layer"], e["expert"], e["action"]) for e in rows[0][1]["edits"])
    assert edits == sorted([(l0, 1, "deactivate"), (l1, 2, "deactivate")])
    assert rows[0][1]["mode"] == "reroute"
    assert sql(db, "SELECT model_id FROM steering_presets")[0][0] == store_copy["model_id"]
    assert "quiet-code" in at.dataframe[0].value["name"].tolist()

    # edit: the form now shows the preset; add a forced expert, switch to drop mode, rename
    assert by_label(at.selectbox, "Preset to edit").value == "quiet-code"
    pid = sql(db, "SELECT preset_id FROM steering_presets")[0][0]
    assert at.multiselect(key=f"poff_{pid}").value == [f"L{l0}/e1", f"L{l1}/e2"]
    at.multiselect(key=f"pon_{pid}").set_value([f"L{l0}/e5"])
    at.selectbox(key=f"pmode_{pid}").set_value("drop")
    at.text_input(key=f"pname_{pid}").set_value("quiet-code-v2")
    [b for b in at.button if b.label == "Save preset"][0].click().run()
    assert_clean(at)
    rows = _preset_rows(db)
    assert [r[0] for r in rows] == ["quiet-code-v2"]
    edits = sorted((e["layer"], e["expert"], e["action"]) for e in rows[0][1]["edits"])
    assert edits == sorted([(l0, 1, "deactivate"), (l1, 2, "deactivate"), (l0, 5, "activate")])
    assert rows[0][1]["mode"] == "drop"
    assert sql(db, "SELECT count(*) FROM steering_presets")[0][0] == 1  # edited, not added

    # an invalid edit (too many experts forced on) is one line, and nothing is written
    over = [f"L{l0}/e{i}" for i in range(store_copy["top_k"] + 1)]
    at.multiselect(key=f"pon_{pid}").set_value(over)
    at.multiselect(key=f"poff_{pid}").set_value([])
    [b for b in at.button if b.label == "Save preset"][0].click().run()
    assert not at.exception and "forced on" in at.error[0].value
    assert _preset_rows(db) == rows

    # delete needs the confirmation
    goto(at, "steering")
    assert at.button(key="delete_preset").disabled
    at.checkbox(key="confirm_delete").check().run()
    at.button(key="delete_preset").click().run()
    assert_clean(at)
    assert _preset_rows(db) == []
    assert any("Deleted preset" in s.value for s in at.success)


def test_localization_button_creates_a_preset(store_copy, monkeypatch):
    db = store_copy["db"]
    at = goto(open_app(db, monkeypatch), "localization")
    by_label(at.selectbox, "Target").set_value("label:code").run()
    at.number_input(key="preset_q").set_value(1.0).run()  # keep every positive score
    at.number_input(key="preset_top").set_value(2).run()
    at.text_input(key="preset_name").set_value("from-ranking").run()
    ranking = at.dataframe[0].value
    expected = [(int(r.layer), int(r.expert)) for r in ranking.itertuples() if r.score > 0][:2]
    at.button(key="create_preset_from_ranking").click().run()
    assert_clean(at)
    ((name, spec),) = _preset_rows(db)
    assert name == "from-ranking"
    assert [(e["layer"], e["expert"]) for e in spec["edits"]] == expected
    assert {e["action"] for e in spec["edits"]} == {"deactivate"}


def test_playground_generates_side_by_side(store_copy, monkeypatch):
    db = store_copy["db"]
    layer = store_copy["layers"][0]
    at = goto(open_app(db, monkeypatch), "steering")
    off = [f"L{layer}/e{i}" for i in range(3)]
    at.text_input(key="pname_new").set_value("off3")
    at.multiselect(key="poff_new").set_value(off)
    [b for b in at.button if b.label == "Create preset"][0].click().run()
    at.text_area(key="play_prompt").set_value("the cat sat on")
    at.number_input(key="play_tokens").set_value(4)
    [b for b in at.button if b.label.startswith("Generate")][0].click().run()
    assert_clean(at)
    assert len(at.code) >= 2 and all(c.value.startswith("the cat sat on") for c in at.code[:2])
    assert any(t.startswith("Per-token log-probability") for t in chart_titles(at))
    tokens = next(d.value for d in at.dataframe if "logp_base" in d.value.columns)
    assert len(tokens[tokens["which"] == "steered"]) == 4
    assert np.allclose(tokens["change"], tokens["logp_steered"] - tokens["logp_base"])
    changes = next(d.value for d in at.dataframe if "tokens_steered" in d.value.columns)
    # the deactivated experts are never routed to under the preset ...
    for i in range(3):
        hit = changes[(changes["layer"] == layer) & (changes["expert"] == i)]
        assert hit.empty or int(hit["tokens_steered"].iloc[0]) == 0
    # ... and every token still picks k experts, so the changes of a layer cancel out
    assert all(g["change"].sum() == 0 for _, g in changes.groupby("layer"))


# ---- empty stores and a concurrent writer -----------------------------------------------------
@pytest.mark.parametrize("kind", ["missing", "no runs"])
def test_empty_store_shows_how_to_start(kind, tmp_path, monkeypatch):
    db = tmp_path / "empty.duckdb"
    if kind == "no runs":
        from routescope.store.store import RoutingStore

        RoutingStore(db).close()
    at = open_app(str(db), monkeypatch)
    for page in PAGES:
        goto(at, page)
        assert any(f"routescope demo --db {db}" in i.value for i in at.info), page


#: a real collection job into the app's store: `run_job` (what `routescope collect` runs) on a
#: tiny OLMoE, one commit per engine batch; after each commit (run_job's after_batch) it says
#: "committed i RUN_ID" and waits for "read i", so the app can be checked against each state
COLLECTOR = r"""
import os, select, sys, time
import torch
torch.set_num_threads(1)
from routescope.collect.jobs import job_from_options
from routescope.collect.runner import run_job
model, prompts, db, name = sys.argv[1:5]
to_app, from_app, timeout = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
job = job_from_options([prompts], model=model, db=db, batch_size=2, max_new_tokens=1, name=name)

def handshake(i):
    os.write(to_app, f"committed {i} {job.run_id}\n".encode())
    answer, deadline = b"", time.monotonic() + timeout
    while not answer.endswith(b"\n"):
        ready, _, _ = select.select([from_app], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(from_app, 64) if ready else b""
        if not chunk:
            sys.exit(f"no 'read {i}' from the app test within {timeout:.0f} s")
        answer += chunk
    if answer.decode().strip() != f"read {i}":
        sys.exit(f"expected 'read {i}', got {answer!r}")

res = run_job(job, quiet=True, flush_rows=1, after_batch=handshake)
print(res.status, res.route_rows)
"""
LIVE_PROMPTS = [
    "the cat sat on the mat",
    "def f ( x ) : return x + 1",
    "a big dog ran under the red rug",
    "for x in y : print ( x * 2 )",
    "one two three four five",
    "if x = 0 : print ( y )",
]  # 6 prompts, batches of 2: three commits
TURN_TIMEOUT = 120.0


def read_line(fd: int, timeout: float) -> str | None:
    """One line from the job's pipe; None at end of file (it exited); fails after timeout."""
    data, deadline = b"", time.monotonic() + timeout
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            raise AssertionError(f"the collection job said nothing for {timeout:.0f} s")
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        data += chunk
    return data.decode().strip()


def runs_row(at, run_id: str) -> dict:
    """The Runs page's table row of run_id (re-rendered now)."""
    goto(at, "runs")
    table = at.dataframe[0].value
    rows = table[table["run_id"] == run_id]
    assert len(rows) == 1, table["run_id"].tolist()
    return rows.iloc[0].to_dict()


def stored(db: str, run_id: str) -> tuple[int, int, str]:
    """(sequences, tokens, status) of run_id in the store right now."""
    (n_seq,) = sql(db, "SELECT count(*) FROM sequences WHERE run_id = ?", [run_id])[0]
    (n_tok,) = sql(db, "SELECT count(*) FROM tokens WHERE run_id = ?", [run_id])[0]
    (status,) = sql(db, "SELECT status FROM runs WHERE run_id = ?", [run_id])[0]
    return int(n_seq), int(n_tok), str(status)


def test_pages_render_while_a_collection_job_writes(store_copy, tmp_path, monkeypatch):
    """A real collection job writes into the store the app shows: after every commit the Runs
    page, re-rendered, shows exactly the rows stored at that moment; while the job computes and
    commits the next batch, the other pages render from the same file without an error."""
    from tiny_models import build_tiny_olmoe, make_tokenizer

    db = store_copy["db"]
    model = tmp_path / "live-model"
    build_tiny_olmoe(seed=7).save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    prompts = tmp_path / "live.txt"
    prompts.write_text("\n".join(LIVE_PROMPTS) + "\n", encoding="utf-8")
    at = open_app(db, monkeypatch)
    assert_clean(at)
    from_job, job_out = os.pipe()
    job_in, to_job = os.pipe()
    out, err = tmp_path / "job.out", tmp_path / "job.err"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    with out.open("w") as out_f, err.open("w") as err_f:
        job = subprocess.Popen(
            [sys.executable, "-c", COLLECTOR, str(model), str(prompts), db, "live"]
            + [str(job_out), str(job_in), str(TURN_TIMEOUT)],
            stdout=out_f,
            stderr=err_f,
            env=env,
            pass_fds=(job_out, job_in),
        )
    os.close(job_out)
    os.close(job_in)
    seen: list[tuple[int, int]] = []
    between = itertools.cycle(["tokens", "experts", "locality", "sql"])
    try:
        while (line := read_line(from_job, TURN_TIMEOUT)) is not None:
            i = len(seen)
            word, n, run_id = line.split()
            assert (word, int(n)) == ("committed", i), line
            # the job waits: the page must show exactly what the store holds now
            n_seq, n_tok, status = stored(db, run_id)
            assert n_seq == 2 * (i + 1) and status == "running"
            row = runs_row(at, run_id)
            assert (int(row["sequences"]), int(row["tokens"])) == (n_seq, n_tok)
            assert row["status"] == "running"
            seen.append((n_seq, n_tok))
            os.write(to_job, f"read {i}\n".encode())
            # the job computes and commits its next batch meanwhile: pages still render
            page = next(between)
            goto(at, page)
            assert chart_specs(at) or at.dataframe or page == "sql", page
        job.wait(timeout=TURN_TIMEOUT)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(timeout=30)
        os.close(from_job)
        os.close(to_job)
    assert job.returncode == 0, err.read_text()[-2000:]
    assert out.read_text().split()[0] == "complete"
    # three commits, each showing more rows than the one before
    assert len(seen) == 3, seen
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(seen)), seen
    n_seq, n_tok, status = stored(db, run_id)
    assert (n_seq, status) == (len(LIVE_PROMPTS), "complete")
    row = runs_row(at, run_id)
    assert (int(row["sequences"]), int(row["tokens"]), row["status"]) == (n_seq, n_tok, status)
    # the fixture's run is untouched and still listed with its counts
    first = runs_row(at, store_copy["run_id"])
    assert int(first["tokens"]) == store_copy["tokens"]
    goto(at, "sql")
    at.button(key="run_named").click().run()  # the default named query, read-only
    assert_clean(at)


def test_cli_builds_the_streamlit_command(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from routescope.cli import dashboard
    from routescope.cli._app import app

    assert dashboard.APP_MAIN == MAIN and Path(dashboard.APP_MAIN).is_file()
    cmd = dashboard.streamlit_command("/x/y.duckdb", 9999, "127.0.0.1")
    assert cmd[1:5] == ["-m", "streamlit", "run", str(MAIN)]
    assert cmd[cmd.index("--server.port") + 1] == "9999"
    assert cmd[cmd.index("--server.headless") + 1] == "true"  # never the first-run e-mail prompt
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"
    assert cmd[-2:] == ["--db", "/x/y.duckdb"]
    cmd = dashboard.streamlit_command("/x/y.duckdb", 9999, "0.0.0.0", usage_stats=True)
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "true"
    assert cmd[cmd.index("--server.address") + 1] == "0.0.0.0"

    # the command line `routescope app` execs into (without --open): always headless; the old
    # --headless is still accepted; --usage-stats is the only way to send statistics
    execs: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(dashboard.os, "execve", lambda exe, argv, env: execs.append((argv, env)))
    db = tmp_path / "s.duckdb"
    for args, stats in ([], "false"), (["--headless"], "false"), (["--usage-stats"], "true"):
        result = CliRunner().invoke(app, ["app", "--db", str(db), "--port", "8601", *args])
        assert result.exit_code == 0, (args, result.output, repr(result.exception))
        argv, env = execs.pop()
        assert argv[argv.index("--server.headless") + 1] == "true"
        assert argv[argv.index("--browser.gatherUsageStats") + 1] == stats
        assert argv[argv.index("--server.port") + 1] == "8601"
        assert argv[-1] == env["ROUTESCOPE_DB"] == str(db.resolve())


def test_steered_collection_starts_from_the_app(store_copy, tmp_path, monkeypatch):
    db, layer = store_copy["db"], store_copy["layers"][0]
    prompts = tmp_path / "steer_prompts.txt"
    prompts.write_text("the cat sat on the mat\none two three four five\n", encoding="utf-8")
    at = goto(open_app(db, monkeypatch), "steering")
    at.text_input(key="pname_new").set_value("no-e0")
    at.multiselect(key="poff_new").set_value([f"L{layer}/e0"])
    [b for b in at.button if b.label == "Create preset"][0].click().run()
    at.text_input(key="collect_prompts").set_value(str(prompts))
    at.text_input(key="collect_name").set_value("steered-run")
    [b for b in at.button if b.label == "Start collection"][0].click().run()
    assert_clean(at)
    ((proc, log, cmd),) = at.session_state["jobs"]
    assert proc.wait(timeout=300) == 0, Path(log).read_text()
    at.run()
    assert_clean(at)
    assert any("finished" in e.label for e in at.expander)
    preset_id = sql(db, "SELECT preset_id FROM steering_presets WHERE name = 'no-e0'")[0][0]
    assert sql(db, "SELECT steering_id, status FROM runs WHERE run_id = 'steered-run'") == [
        (preset_id, "complete")
    ]
    goto(at, "runs")  # the run list names the preset the run was steered with
    table = at.dataframe[0].value.set_index("run_id")
    assert table.loc["steered-run", "steering preset"] == "no-e0"
    n_seq = sql(db, "SELECT count(*) FROM sequences WHERE run_id = 'steered-run'")[0][0]
    assert n_seq == 2
    # the preset deactivated expert 0 at that layer: the steered routing never selects it
    used = sql(
        db,
        "SELECT count(*) FROM route_choices WHERE run_id = 'steered-run' AND layer = ? "
        "AND expert = 0",
        [layer],
    )[0][0]
    assert used == 0


HOLDER = r"""
import sys, time
from pathlib import Path
import duckdb
db, ready, stop = sys.argv[1:4]
while True:
    try:
        con = duckdb.connect(db)
        break
    except duckdb.IOException:
        time.sleep(0.02)
con.execute("INSERT OR REPLACE INTO meta VALUES ('held', '1')")  # the file changes: new data
Path(ready).write_text("1")
while not Path(stop).exists():
    time.sleep(0.05)
con.close()
"""


def test_a_writer_holding_the_file_shows_the_last_data_with_a_note(
    store_copy, tmp_path, monkeypatch
):
    db = store_copy["db"]
    at = goto(open_app(db, monkeypatch), "tokens")
    assert chart_specs(at) and not at.warning
    monkeypatch.setattr(sys.modules["_shared"], "LOCK_TIMEOUT", 0.5)
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, db, str(ready), str(stop)])
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
        for page in ("tokens", "runs"):
            goto(at, page)
            assert any("busy" in w.value for w in at.warning), page
            assert chart_specs(at) or at.dataframe, page
    finally:
        stop.write_text("stop")
        holder.wait(timeout=30)
    goto(at, "tokens")
    assert not at.warning and chart_specs(at)


def test_every_read_only_page_works_on_a_parquet_export(fixture_store, tmp_path, monkeypatch):
    """--db may be a `routescope export` directory: every page that only reads renders from it."""
    from routescope.store.parquet import export_parquet
    from routescope.store.store import RoutingStore

    out = tmp_path / "export"
    with RoutingStore(fixture_store["db"], read_only=True) as store:
        export_parquet(store, fixture_store["run_id"], out)
    at = open_app(str(out), monkeypatch)
    assert at.selectbox(key="_run_widget").value == fixture_store["run_id"]
    read_only = [p.key for p in manifest.PAGES if p.file and p.read_only_ok]
    assert {"runs", "tokens", "experts", "locality", "localization", "sql"} <= set(read_only)
    for page in read_only:
        goto(at, page)
    goto(at, "runs")
    table = at.dataframe[0].value
    assert int(table["tokens"][0]) == fixture_store["tokens"]
