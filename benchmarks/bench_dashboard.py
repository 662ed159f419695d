"""Dashboard page times and server memory on a 1M-token OLMoE-shaped run, in headless Chromium.

A synthetic run (16 MoE layers, top-8 of 64, 2,048 sequences of 512 tokens; `benchmarks/synthetic.py`)
is written to a DuckDB file; `streamlit run app/main.py` (the command `routescope app` runs) serves
it; headless Chromium, driven over the DevTools protocol, opens each page of the app's page table
(app/pages.py) and waits until it has settled: its title and charts drawn, no script running, no
spinner or progress bar, its script no longer running (Streamlit's script state), and still so
half a second later. Two servers, each over the same file:
- summarized: `routescope summarize` first (what `routescope collect` and `import` run at their
  end; timed, with its peak memory), then a new server: each page's first view (its results in
  the memo, nothing computed in the server), its repeat view (the page's URL loaded again: a new
  session on the same server) and in-app (the pages reached through the sidebar in one session);
- nothing precomputed: the memo emptied, a new server: first views (every analysis computed in
  the server, streamed from the store, with progress), repeat views, in-app.
The server's peak resident memory is its VmHWM (/proc) at the end of each server's life.

Targets (issue 12): first view <= 20 s, repeat view <= 2 s, server < 2 GiB.

Rerun:  python benchmarks/bench_dashboard.py [--db PATH] [--tokens 1048576] [--out PATH]
(--db keeps the synthetic store for later runs; it is built when missing. Its results memo is
emptied at the start.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.synthetic
sys.path.insert(0, str(ROOT / "app"))  # the app's page table
sys.path.insert(0, str(ROOT / "tests"))  # headless_chromium

import pages as manifest  # noqa: E402
from headless_chromium import CHROMIUM, Chromium, free_port, http_get, wait_for  # noqa: E402

from benchmarks.synthetic import write_synthetic_run  # noqa: E402
from routescope.cli.dashboard import streamlit_command  # noqa: E402

RUN_ID = "olmoe-1m"
#: Seconds a page may take before it counts as failed (and is left out of the later passes).
PAGE_TIMEOUT = 600.0
#: A page counts as settled when its ready test holds now and this many seconds later.
SETTLE = 0.5

#: page key → extra JS test of what the page shows once rendered (beside its title, no script
#: running, no spinner, no progress bar).
SHOWN = {
    "runs": "document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 5",
    "tokens": "plots() >= 1 && document.querySelectorAll('.rs-tok').length > 0",
    "experts": "plots() >= 4",
    "locality": "plots() >= 3",
    "prefetch": "plots() >= 3",
    "localization": "plots() >= 1 && document.querySelectorAll('[data-testid=\"stDataFrame\"]')"
    ".length >= 1",
    "steering": "document.body.innerText.includes('Playground')",
    "sql": "document.querySelectorAll('textarea').length >= 1",
}
READY = """(() => {{
  const plots = () => Array.from(document.querySelectorAll('.js-plotly-plot'))
    .filter(p => p.querySelector('.main-svg')).length;
  const app = document.querySelector('[data-testid="stApp"]');
  const idle = app && app.getAttribute('data-test-script-state') === 'notRunning';
  const h1 = Array.from(document.querySelectorAll('h1')).some(h => h.innerText.trim() === {title});
  const busy = document.querySelector('[data-testid="stStatusWidget"], [data-testid="stSpinner"],'
    + ' [data-testid="stProgress"], [data-testid="stSkeleton"]');
  const errors = Array.from(document.querySelectorAll('[data-testid="stException"],'
    + ' [data-testid="stAlertContentError"]')).map(e => e.innerText.slice(0, 300));
  if (errors.length) return {{errors}};
  const content = plots() + document.querySelectorAll('[data-testid="stDataFrame"],'
    + ' [data-testid="stMetric"], .rs-tok').length;
  return {{ready: h1 && idle && !busy && ({shown}), content: h1 && content > 0}};
}})()"""


# ---- the browser ---------------------------------------------------------------------------------
class Browser(Chromium):
    """Headless Chromium (tests/headless_chromium.py) that opens and times the app's pages."""

    def __init__(self, profile: Path) -> None:
        if CHROMIUM is None:
            raise SystemExit("Chromium is not installed (apt-get install chromium)")
        super().__init__(profile)

    def view(
        self, url: str, page: manifest.Page, in_app: bool = False
    ) -> tuple[float, float, str | None]:
        """Open the page: load url (a new session), or with `in_app` click its sidebar link in
        the session already open. (seconds until the page settled, seconds until its first
        chart, table or metric showed, error text or None)."""
        test = READY.format(title=json.dumps(page.title), shown=SHOWN.get(page.key, "true"))
        t0 = time.perf_counter()
        first = float("nan")
        if in_app:
            link = f'[data-testid="stSidebarNavLink"][href$="/{page.url_path}"]'
            if not self.cdp.js(f"(() => {{ const a = document.querySelector('{link}');"
                               " if (a) a.click(); return !!a; })()"):  # fmt: skip
                return 0.0, first, f"no sidebar link to /{page.url_path}"
        else:
            self.cdp.call("Page.navigate", url=url)
        deadline = t0 + PAGE_TIMEOUT
        while time.perf_counter() < deadline:
            state = self.cdp.js(test) or {}
            now = time.perf_counter() - t0
            if state.get("errors"):
                return now, first, "; ".join(state["errors"])
            if state.get("content") and first != first:  # NaN until the first content
                first = now
            if state.get("ready"):
                time.sleep(SETTLE)
                if (self.cdp.js(test) or {}).get("ready"):
                    return now, min(first, now), None
                continue
            time.sleep(0.1)
        return time.perf_counter() - t0, first, f"not settled after {PAGE_TIMEOUT:.0f} s"


# ---- the server ----------------------------------------------------------------------------------
def proc_kib(pid: int, field_name: str) -> int:
    """A memory field (VmRSS, VmHWM) of /proc/<pid>/status in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """`streamlit run app/main.py` over db on a free port."""

    def __init__(self, db: str, workdir: Path) -> None:
        self.port = free_port()
        self.log = (workdir / f"streamlit-{self.port}.log").open("w")
        env = {**os.environ, "ROUTESCOPE_DB": db}
        self.proc = subprocess.Popen(
            streamlit_command(db, self.port, "127.0.0.1"),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for(lambda: http_get(f"{self.base}/_stcore/health") == "ok", 120, "streamlit")

    def rss_mib(self) -> float:
        return proc_kib(self.proc.pid, "VmRSS") / 1024

    def peak_mib(self) -> float:
        return proc_kib(self.proc.pid, "VmHWM") / 1024

    def stop(self) -> float:
        """Stop the server; its peak resident memory in MiB."""
        peak = self.peak_mib()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return peak


# ---- the benchmark -------------------------------------------------------------------------------
@dataclass
class Pass:
    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    first_content: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rss_after: dict[str, float] = field(default_factory=dict)
    peak_after: dict[str, float] = field(default_factory=dict)


def view_all(
    browser: Browser,
    server: Server,
    name: str,
    keys: list[str],
    skip: Pass | None = None,
    in_app: bool = False,
) -> Pass:
    """View each page once (loading its URL, or with `in_app` through the sidebar); pages that
    did not settle in `skip` (an earlier pass) are left out."""
    out = Pass(name)
    for key in keys:
        page = manifest.page(key)
        if skip is not None and "not settled" in skip.errors.get(key, ""):
            out.seconds[key], out.first_content[key] = float("nan"), float("nan")
            out.rss_after[key] = out.peak_after[key] = float("nan")
            out.errors[key] = "left out (did not settle in the first pass)"
            continue
        seconds, first, error = browser.view(f"{server.base}/{page.url_path}", page, in_app)
        out.seconds[key] = seconds
        out.first_content[key] = first
        out.rss_after[key] = server.rss_mib()
        out.peak_after[key] = server.peak_mib()
        if error:
            out.errors[key] = error
        status = f"error: {error[:200]}" if error else "ok"
        print(
            f"  {name:<13} {key:<13} {seconds:7.2f} s (first content {first:6.2f} s)  "
            f"rss {out.rss_after[key]:7.0f} MiB  {status}",
            flush=True,
        )
    return out


def build(db: str, tokens: int) -> str:
    t0 = time.perf_counter()
    out = write_synthetic_run(
        db, RUN_ID, tokens=tokens, seq_len=512, layers=16, experts=64, top_k=8, seed=0
    )
    size = Path(db).stat().st_size / 2**20
    return (
        f"Built in {time.perf_counter() - t0:.0f} s with `benchmarks/synthetic.py` "
        f"({int(out['route_rows']):,} route rows, {size:,.0f} MiB)."
    )


def machine() -> str:
    mem = proc_total_gib()
    chrome = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    import streamlit

    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, Python "
        f"{platform.python_version()}, streamlit {streamlit.__version__}, duckdb "
        f"{duckdb.__version__}, {chrome} (a shared machine)"
    )


def proc_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def cell(p: Pass, key: str) -> str:
    """A page's time in a pass, or what kept it from settling."""
    error = p.errors.get(key)
    if error is None:
        return f"{p.seconds[key]:.2f}"
    if error.startswith("left out"):
        return "—"
    if error.startswith("not settled"):
        return f"> {PAGE_TIMEOUT:.0f} (not settled)"
    return f"{p.seconds[key]:.2f} (error)"


def summarize(db: str) -> tuple[float, float, str]:
    """`routescope summarize` over the run, in a process of its own: (wall seconds, its peak
    resident memory in MiB, its output)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        f"sys.argv = ['routescope', 'summarize', {RUN_ID!r}, '--db', {db!r}]\n"
        "from routescope.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    hwm = [l for l in Path('/proc/self/status').read_text().splitlines()\n"
        "           if l.startswith('VmHWM:')][0].split()[1]\n"
        "    print(f'VmHWM_KiB={hwm}', flush=True)\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"routescope summarize failed:\n{out}")
    hwm = next(int(x.split("=")[1]) for x in out.split() if x.startswith("VmHWM_KiB="))
    return seconds, hwm / 1024, out


def empty_memo(db: str) -> int:
    """Delete the run's stored results (the state before any analysis); the run's token count."""
    con = duckdb.connect(db)
    try:
        tokens = con.execute("SELECT count(*) FROM tokens WHERE run_id = ?", [RUN_ID]).fetchall()
        con.execute("DELETE FROM analysis_results WHERE run_id = ?", [RUN_ID])
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return int(tokens[0][0])


def serve(
    db: str, work: Path, browser: Browser, keys: list[str], label: str
) -> tuple[list[Pass], float]:
    """A new server over db: first, repeat and in-app views of each page; (passes, peak MiB)."""
    server = Server(db, work)
    try:
        first = view_all(browser, server, f"{label} first", keys)
        passes = [
            first,
            view_all(browser, server, f"{label} repeat", keys, skip=first),
            view_all(browser, server, f"{label} in-app", keys, skip=first, in_app=True),
        ]
    finally:
        peak = server.stop()
    return passes, peak


def report(
    keys: list[str],
    summarized: list[Pass],
    fresh: list[Pass],
    peaks: tuple[float, float],
    summary: tuple[float, float],
    built: str,
    tokens: int,
) -> str:
    ok = lambda p, k, limit: (  # noqa: E731
        ("—" if p.errors[k].startswith("left out") else "**no**")
        if k in p.errors
        else ("yes" if p.seconds[k] <= limit else "**no**")
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Dashboard: page times and server memory",
        "",
        f"Run: synthetic, OLMoE-shaped (16 MoE layers, top-8 of 64 experts), {tokens:,} tokens in "
        f"{tokens // 512:,} sequences of 512 (4 labels), written with `RoutingStore.write_batch` "
        f"and clustered like a finished collection. {built}",
        "",
        "Each page opened in headless Chromium (DevTools protocol) until settled: title and charts "
        "drawn, no script running, no spinner or progress bar, still so 0.5 s later (time to the "
        "first such moment). Pages with their default choices (first sequence, middle layer, "
        "default segment lengths and policies, first label against the rest). *first view*: a "
        "new server's first view of the page; *repeat view*: the page's URL loaded again (a new "
        "browser session on the same server); *in-app*: the pages reached through the sidebar in "
        "one session, as a user moves between them.",
        "",
        f"**After `routescope summarize`** (what `routescope collect` and `routescope import` run "
        f"at their end): {summary[0]:.0f} s, peak memory {summary[1]:,.0f} MiB, in a process of "
        "its own; then a new server.",
        "",
        "| page | first view s | repeat view s | in-app s | first ≤ 20 s | repeat ≤ 2 s |",
        "|---|---:|---:|---:|:---:|:---:|",
    ]
    for k in keys:
        cells = [cell(p, k) for p in summarized]
        lines.append(
            f"| {manifest.page(k).title} | {' | '.join(cells)} | {ok(summarized[0], k, 20)} | "
            f"{ok(summarized[1], k, 2)} |"
        )
    lines += [
        "",
        f"Server peak resident memory (VmHWM): **{peaks[0]:,.0f} MiB** (target < 2,048 MiB).",
        "",
        "**Nothing precomputed** (the memo emptied, a new server: each page's first view "
        "computes its analyses in the server, in chunks of `APP_MAX_ROWS` route rows, with "
        "progress):",
        "",
        "| page | first view s | its first chart or table s | repeat view s | in-app s "
        "| repeat ≤ 2 s |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for k in keys:
        first = fresh[0]
        shown = first.first_content[k]
        cells = [cell(first, k), "—" if shown != shown else f"{shown:.2f}"]
        cells += [cell(p, k) for p in fresh[1:]]
        lines.append(f"| {manifest.page(k).title} | {' | '.join(cells)} | {ok(fresh[1], k, 2)} |")
    lines += [
        "",
        f"Server peak resident memory (VmHWM): **{peaks[1]:,.0f} MiB** (target < 2,048 MiB).",
        "",
        "Server memory after each page's first view, resident / peak so far (MiB): "
        + ", ".join(
            f"{manifest.page(k).title} {fresh[0].rss_after[k]:,.0f} / {fresh[0].peak_after[k]:,.0f}"
            for k in keys
        )
        + ".",
    ]
    errors = {(p.name, k): e for p in [*summarized, *fresh] for k, e in p.errors.items()}
    if errors:
        lines += ["", "Errors:"] + [f"- {n} / {k}: {e}" for (n, k), e in errors.items()]
    lines += [
        "",
        f"Machine: {machine()}; load average when the benchmark started: "
        f"{START_LOAD}, at the end: {load}.",
        "",
        "Rerun: `python benchmarks/bench_dashboard.py --db /tmp/olmoe-1m.duckdb` (builds the run "
        "when the file is missing, then keeps it; `--tokens` for another size; `--pages` for "
        "some pages).",
        "",
    ]
    return "\n".join(lines)


#: The load average when the benchmark started (a shared machine: others' work slows it down).
START_LOAD = ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and browser too
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="the run's store (built when missing; default: a temp file)")
    ap.add_argument("--tokens", type=int, default=1_048_576)
    ap.add_argument("--pages", help="comma list of page keys (default: every visible page)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dashboard.md"))
    args = ap.parse_args()
    keys = args.pages.split(",") if args.pages else [p.key for p in manifest.visible()]
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        db = args.db or str(work / "olmoe-1m.duckdb")
        if Path(db).exists():
            built = f"Store reused from {db}."
        else:
            print(f"building {args.tokens:,} tokens into {db} …", flush=True)
            built = build(db, args.tokens)
            print(built, flush=True)
        browser = Browser(work / "chrome-profile")
        try:
            tokens = empty_memo(db)
            print("routescope summarize …", flush=True)
            seconds, mib, out = summarize(db)
            print(out, f"summarize: {seconds:.0f} s, peak {mib:,.0f} MiB", flush=True)
            summarized, peak_summarized = serve(db, work, browser, keys, "summarized")
            empty_memo(db)
            fresh, peak_fresh = serve(db, work, browser, keys, "fresh")
        finally:
            browser.close()
    text = report(
        keys, summarized, fresh, (peak_summarized, peak_fresh), (seconds, mib), built, tokens
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
