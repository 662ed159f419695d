"""The dashboard in a real browser: `streamlit run` serves the app on 127.0.0.1, headless Chromium
loads the Runs (at `/runs` and at `/`), Tokens and Steering pages (driven over the Chrome DevTools
protocol, with the `websockets` client streamlit already depends on), finds the rendered charts
and widgets, hovers a heatmap cell, picks a preset in the editor, and saves screenshots. Skipped
only where no Chromium is installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import pages as manifest  # app/pages.py (conftest puts app/ on sys.path)
import pytest
from headless_chromium import CDP, CHROMIUM, Chromium, free_port, http_get, wait_for

pytestmark = pytest.mark.e2e

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (apt-get install chromium; scripts/test.sh does it)",
)


@pytest.fixture
def served_app(store_copy, tmp_path):
    """The app served by `streamlit run` (the command `routescope app` runs) on a free port."""
    from routescope.cli.dashboard import streamlit_command

    db = store_copy["db"]
    con = duckdb.connect(db)  # a preset, so the Steering page lists and edits one
    spec = {"edits": [{"layer": store_copy["layers"][0], "expert": 1, "action": "deactivate"}]}
    con.execute(
        "INSERT INTO steering_presets (preset_id, name, model_id, spec) VALUES (?, ?, ?, ?)",
        ["p1", "browser-preset", store_copy["model_id"], json.dumps(spec)],
    )
    con.close()
    port = free_port()
    log = (tmp_path / "streamlit.log").open("w")
    env = {**os.environ, "ROUTESCOPE_DB": db}
    proc = subprocess.Popen(
        streamlit_command(db, port, "127.0.0.1"),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/_stcore/health") == "ok", 90, "streamlit to serve")
        yield base, store_copy
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a fresh profile; yields a CDP client on its first page."""
    chromium = Chromium(tmp_path / "chrome-profile")
    try:
        yield chromium.cdp
    finally:
        chromium.close()


def open_page(cdp: CDP, url: str, ready_js: str, what: str) -> None:
    """Navigate and wait until the app has rendered (ready_js is true, no exception box)."""
    cdp.call("Page.navigate", url=url)
    wait_for(lambda: cdp.js(ready_js), 120, what, interval=0.5)
    # let the script run finish (the status widget disappears) before looking closer
    wait_for(
        lambda: not cdp.js("!!document.querySelector('[data-testid=\"stStatusWidget\"]')"),
        60,
        "the script run to finish",
    )
    errors = cdp.js(
        'Array.from(document.querySelectorAll(\'[data-testid="stException"], '
        '[data-testid="stAlertContentError"]\')).map(e => e.innerText)'
    )
    assert errors == [], errors


def value_of(cdp: CDP, selector: str) -> str | None:
    """The value of the first input under selector (a selectbox's or text input's shown value)."""
    return cdp.js(f"(document.querySelector({json.dumps(selector)} + ' input') || {{}}).value")


RUNS_READY = (
    "document.querySelectorAll('[data-testid=\"stMetric\"]').length > 0 && "
    "Array.from(document.querySelectorAll('h1')).some(h => h.innerText.trim() === 'Runs')"
)


def assert_runs_page(cdp: CDP, run_id: str) -> None:
    """The Runs page is shown, at /runs, marked in the sidebar, and no "Page not found"."""
    text = cdp.js("document.body.innerText")
    assert "Page not found" not in text
    assert f"Run {run_id}" in text and "run(s) in" in text  # the run's subheader and caption
    assert cdp.js("location.pathname") == "/runs"
    nav = cdp.js(
        "Array.from(document.querySelectorAll('[data-testid=\"stSidebarNavLink\"]'))"
        ".map(a => [a.innerText.split('\\n').pop().trim(), a.getAttribute('aria-current')])"
    )
    assert [n for n in nav if n[0] == "Runs"] == [["Runs", "page"]], nav  # listed once, current
    # the visible pages of the page table, in order; the hidden start page is not listed
    assert [n[0] for n in nav] == [p.title for p in manifest.visible()], nav


@needs_chromium
def test_tokens_and_steering_pages_render_in_chromium(served_app, browser, tmp_path):
    base, store = served_app
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # Runs: the default page answers at its own URL, /runs, and / switches to it
    open_page(browser, f"{base}/runs", RUNS_READY, "the Runs page at /runs")
    assert_runs_page(browser, store["run_id"])
    open_page(browser, f"{base}/", RUNS_READY, "the Runs page at /")
    wait_for(lambda: browser.js("location.pathname") == "/runs", 20, "/ to switch to /runs")
    assert_runs_page(browser, store["run_id"])

    # Tokens: the heatmap is drawn by plotly.js, the text has one coloured span per token
    open_page(
        browser,
        f"{base}/tokens",
        "document.querySelectorAll('.js-plotly-plot .heatmaplayer, .js-plotly-plot image').length"
        " > 0 && document.querySelectorAll('.rs-tok').length > 0",
        "the Tokens page's heatmap and coloured text",
    )
    n_plots = browser.js("document.querySelectorAll('.js-plotly-plot').length")
    assert n_plots >= 1
    con = duckdb.connect(store["db"], read_only=True)
    first_len = con.execute(
        "SELECT num_tokens FROM sequences WHERE run_id = ? ORDER BY seq_id LIMIT 1",
        [store["run_id"]],
    ).fetchall()[0][0]
    con.close()
    assert browser.js("document.querySelectorAll('.rs-tok').length") == first_len
    tooltip = browser.js("document.querySelector('.rs-tok').title")
    assert all(f"L{layer}: " in tooltip for layer in store["layers"])

    # hover the middle of the heatmap: plotly shows the token's experts at every layer
    box = browser.js(
        "(() => { const r = document.querySelector('.js-plotly-plot .nsewdrag')"
        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    browser.js("document.querySelector('.js-plotly-plot').scrollIntoView({block: 'center'})")
    box = browser.js(
        "(() => { const r = document.querySelector('.js-plotly-plot .nsewdrag')"
        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    for dx in (0, 3):
        browser.call("Input.dispatchMouseEvent", type="mouseMoved", x=box[0] + dx, y=box[1])
    hover = wait_for(
        lambda: browser.js(
            "(document.querySelector('.js-plotly-plot .hoverlayer .hovertext') || {}).textContent"
        ),
        20,
        "the heatmap's hover label",
    )
    assert "layer" in hover and all(f"L{layer}:" in hover for layer in store["layers"])
    tokens_png = browser.screenshot(shots / "tokens.png")

    # Steering: the preset is listed and loaded into the edit form
    open_page(
        browser,
        f"{base}/steering",
        "document.body.innerText.includes('Playground') && "
        "document.body.innerText.includes('Steered collection')",
        "the Steering page",
    )
    assert "Presets" in browser.js("document.body.innerText")
    # the playground and the steered collection offer it (their pickers exist only with a preset)
    for picker in (".st-key-play_preset", ".st-key-collect_preset"):
        wait_for(
            lambda p=picker: value_of(browser, p) == "browser-preset",
            30,
            f"{picker} to offer browser-preset",
        )
    # the preset table (a canvas grid; its cells are mirrored in an accessible <table>)
    layer = store["layers"][0]
    cells = wait_for(
        lambda: browser.js(
            "Array.from(document.querySelectorAll('[data-testid=\"stDataFrame\"] td'))"
            ".map(td => td.textContent)"
        ),
        20,
        "the preset table's cells",
    )
    assert "browser-preset" in cells, cells
    specs = [json.loads(c) for c in cells if c.startswith("{")]
    assert [sp["edits"] for sp in specs] == [
        [{"action": "deactivate", "expert": 1, "layer": layer}]
    ]
    # picking it in "Preset to edit" loads its name and its edit into the form
    assert value_of(browser, ".st-key-preset_choice") == "(new preset)"
    browser.click(".st-key-preset_choice button")
    wait_for(
        lambda: browser.js(
            "(() => { const o = Array.from(document.querySelectorAll('[role=option]'))"
            ".find(e => e.innerText.trim() === 'browser-preset');"
            " if (o) o.setAttribute('data-test-pick', '1'); return !!o; })()"
        ),
        20,
        "browser-preset among the editor's options",
    )
    browser.click("[data-test-pick='1']")
    wait_for(
        lambda: value_of(browser, ".st-key-pname_p1") == "browser-preset",
        30,
        "the edit form of browser-preset",
    )
    assert value_of(browser, ".st-key-preset_choice") == "browser-preset"
    deactivate = browser.js("document.querySelector('.st-key-poff_p1').innerText")
    assert f"L{layer}/e1" in deactivate.split()
    forced = browser.js("document.querySelector('.st-key-pon_p1').innerText")
    assert "/e" not in forced, forced  # nothing forced on
    steering_png = browser.screenshot(shots / "steering.png")

    for png in (tokens_png, steering_png):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    keep = os.environ.get("ROUTESCOPE_SCREENSHOTS")
    if keep:  # e.g. to look at them: ROUTESCOPE_SCREENSHOTS=/tmp/shots pytest …
        Path(keep).mkdir(parents=True, exist_ok=True)
        for png in (tokens_png, steering_png):
            shutil.copy(png, Path(keep) / png.name)
