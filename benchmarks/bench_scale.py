"""The streaming analyses at the sizes users have (issue 12): throughput and peak memory per analysis.

Stores (built once by `benchmarks/big_stores.py`, cached under benchmarks/out/):
- `deepseek`: 1M tokens (2,048 x 512), 58 MoE layers, top-8 of 256, 4 labels; an unclustered copy
  (the file before `finish_run`) is kept for the layout comparison;
- `olmoe`: 10M tokens (20,480 x 512), 16 MoE layers, top-8 of 64, 4 labels;
- `deepseek-small`: 128k tokens of the DeepSeek shape, for the in-memory `Trace` comparison.

Every measurement runs in a fresh subprocess (its peak RSS is the process's VmHWM), through the
library path the CLI takes (`RoutingStore(db, read_only=True).source(run)` -> the analysis
function), reading included. Throughput = token-expert accesses read per second: tokens x layers
read x k over wall seconds (CPU seconds beside it: the machine is shared). Before timing, the
analysis runs once on the run's first 4 sequences in memory, so numba's compiled kernels are
loaded (that warm-up is reported apart).

    python benchmarks/bench_scale.py --run deepseek --only cache-lru   # one measurement
    python benchmarks/bench_scale.py --run deepseek                    # every analysis
    python benchmarks/bench_scale.py --layout                          # one layer vs a full scan
    python benchmarks/bench_scale.py --in-memory                       # Trace path, small run
    python benchmarks/bench_scale.py --report                          # write results/scale.md

Results accumulate in benchmarks/out/scale_results.json (one entry per run and measurement, the
latest kept); `--report` writes benchmarks/results/scale.md from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spin-waiting on a shared machine

#: `--code DIR`: measure the routescope package in DIR (e.g. `git archive 790904f routescope |
#: tar -x -C DIR`, the code before this benchmark's changes) instead of this checkout's.
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv[:-1] else None
if CODE:
    sys.path.insert(0, CODE)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(1 if CODE else 0, str(ROOT))

from benchmarks import big_stores as bs  # noqa: E402

RESULTS = bs.OUT / "scale_results.json"
REPORT = ROOT / "benchmarks" / "results" / "scale.md"
GIB = 1 << 30
MEMORY_TARGET = 4 * GIB
THROUGHPUT_TARGET = 10e6

CACHE_POLICIES = ("lru", "lfu", "fifo", "static", "lookahead-16", "belady", "belady-bypass")
SEGMENTS = (4, 16, 64, 256)
ANALYSES = (
    *(f"cache-{p}" for p in CACHE_POLICIES),
    "srp",
    "sch",
    "repetition",
    "load-domain",
    "vocab-layer",
    "vocab-all",
    "coact-layer",
    "coact-cross",
    "saturation",
    "localize",
)
READS = ("read-layer", "read-layer-sql", "read-all", "read-all-sql")
#: The runs `--run` takes: a store of big_stores, or its unclustered copy (reads only).
RUNS = ("deepseek", "deepseek-unclustered", "olmoe", "deepseek-small", "tiny", "tiny-unclustered")


def _store_of(run: str) -> tuple[str, Path]:
    """(big_stores name, file) of a `--run` value."""
    if run.endswith("-unclustered"):
        name = run.removesuffix("-unclustered")
        bs.ensure(name)
        return name, bs.unclustered_path(name)
    bs.ensure(run)
    return run, bs.store_path(run)


def capacities(run: str) -> list[int] | None:
    """The cache capacities measured: 8..128 on the 256-expert runs, all (1..E) otherwise."""
    return [8, 16, 32, 64, 128] if run.startswith("deepseek") else None


# ---- the analyses, as the CLI calls them -----------------------------------------------------
def analysis(name: str, run: str) -> tuple[Callable[[Any, Any], Any], Callable[[Any], int]]:
    """(fn(data, data_b) -> result, layers read per token given the source info). `data` is a
    TraceSource (or a Trace); `data_b` the second run for saturation."""
    from routescope.analysis import cache as ca
    from routescope.analysis import consistency as cons
    from routescope.analysis import localization as lo
    from routescope.analysis import specialization as sp

    all_layers = lambda info: len(info.layers)  # noqa: E731
    if name.startswith("cache-"):
        policy = name.removeprefix("cache-")
        caps = capacities(run)
        return (lambda d, _b: ca.cache_hit_rates(d, policies=[policy], capacities=caps)), all_layers
    if name == "srp":  # `analyze consistency` runs srp with the shuffled baseline (seed 0)
        return (lambda d, _b: cons.srp(d, SEGMENTS, shuffled_seed=0)), all_layers
    if name == "sch":
        return (lambda d, _b: cons.sch(d, SEGMENTS)), all_layers
    if name == "repetition":
        return (lambda d, _b: cons.repetition_rates(d)), all_layers
    if name == "load-domain":

        def load_domain(d: Any, _b: Any) -> Any:  # `analyze specialization`: one counting pass
            dc = sp.domain_counts(d, "label")
            return (
                sp.expert_load(dc),
                sp.load_summary(dc),
                sp.domain_specialization(dc, by="label"),
                sp.domain_cv(dc, by="label"),
            )

        return load_domain, all_layers
    if name == "vocab-layer":
        return (lambda d, _b: sp.vocabulary_specialization(d, 10, layers=[0])), lambda i: 1
    if name == "vocab-all":
        return (lambda d, _b: sp.vocabulary_specialization(d, 10)), all_layers
    if name == "coact-layer":
        return (lambda d, _b: sp.coactivation(d, 0)), lambda i: 1
    if name == "coact-cross":
        return (lambda d, _b: sp.cross_layer_coactivation(d, 0)), lambda i: 2
    if name == "saturation":
        return (lambda d, b: sp.router_saturation(d, b)), all_layers
    if name == "localize":

        def localize(d: Any, _b: Any) -> Any:  # `localize --target label:code --control rest`
            t, c = lo.token_sets_from_specs(d, "label:code", "rest")
            return lo.localize(t, c, n_boot=1000, n_perm=1000, seed=0)

        return localize, all_layers
    raise SystemExit(f"unknown analysis {name!r}; one of {', '.join(ANALYSES)}")


# ---- one measurement, in this process -----------------------------------------------------
def _status(key: str) -> int:
    """A /proc/self/status memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def measure(run: str, name: str, in_memory: bool = False) -> dict[str, Any]:
    """Time one analysis (or read) on `run` in this process; peak memory is this process's."""
    import routescope
    from routescope.core.source import InMemorySource
    from routescope.store.store import RoutingStore

    store_name, path = _store_of(run)
    shape = bs.SHAPES[store_name]
    load0 = os.getloadavg()
    entry: dict[str, Any] = {"run": run, "name": name, "in_memory": in_memory, "db": str(path)}
    entry["code"] = CODE
    entry["routescope"] = str(Path(routescope.__file__).parent)
    with RoutingStore(path, read_only=True) as store:
        run_id = store.resolve_run(shape.run_id)
        if name in READS:
            wall, cpu, (layers_read, rows) = _timed(lambda: read(store, run_id, name))
            info = store.source(run_id).info
            entry["route_rows_read"] = rows
        else:
            fn, n_layers = analysis(name, run)
            phase = "prefill" if name == "saturation" else "all"  # the CLI's defaults
            src = store.source(run_id, phase=phase)
            info = src.info
            layers_read = n_layers(info)
            warm = InMemorySource(src.read(0, min(4, info.num_sequences)))
            entry["warmup_s"], _, _ = _timed(lambda: fn(warm, warm))
            if in_memory:
                entry["load_trace_s"], entry["load_trace_cpu_s"], trace = _timed(
                    lambda: store.load_trace(run_id, phase=phase)
                )
                entry["rss_after_load"] = _status("VmRSS")
                wall, cpu, _ = _timed(lambda: fn(trace, trace))
            else:
                src_b = store.source(run_id, phase=phase) if name == "saturation" else None
                entry["rss_before"] = _status("VmRSS")
                wall, cpu, _ = _timed(lambda: fn(src, src_b))
    accesses = info.num_tokens * layers_read * info.top_k
    entry |= {
        "tokens": info.num_tokens,
        "layers_read": layers_read,
        "top_k": info.top_k,
        "accesses": accesses,
        "wall_s": wall,
        "cpu_s": cpu,
        "accesses_per_wall_s": accesses / wall,
        "accesses_per_cpu_s": accesses / cpu if cpu > 0 else None,
        "peak_rss": _status("VmHWM"),
        "load_average_start": list(load0),
        "load_average_end": list(os.getloadavg()),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    return entry


def read(store: Any, run_id: str, name: str) -> tuple[int, int]:
    """One layer (layer 0) or every layer of the run, through chunks or plain SQL, fully
    consumed; returns (layers read, route rows read)."""
    src = store.source(run_id)
    n_layers = len(src.info.layers)
    if name in ("read-layer", "read-all"):
        layers = [src.info.layers[0]] if name == "read-layer" else None
        rows = 0
        for chunk in src.chunks(layers=layers):
            rows += chunk.num_tokens * chunk.num_layers
        return (1 if layers else n_layers), rows
    where = "run_id = ? AND layer = ?" if name == "read-layer-sql" else "run_id = ?"
    params = [run_id, src.info.layers[0]] if name == "read-layer-sql" else [run_id]
    rel = store.con.sql(f"SELECT experts, weights FROM routes WHERE {where}", params=params)
    rows = 0
    for batch in rel.to_arrow_reader(1 << 20):
        rows += batch.num_rows
    return (1 if name == "read-layer-sql" else n_layers), rows


# ---- the driver: each measurement in a fresh process -------------------------------------------
def load_results() -> dict[str, Any]:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text(encoding="utf-8"))
    return {}


def result_key(run: str, name: str, in_memory: bool = False, code: str | None = None) -> str:
    """The results file's key of one measurement."""
    return f"{run}/{name}" + ("/in-memory" if in_memory else "") + (f"/code={code}" if code else "")


def save_result(entry: dict[str, Any]) -> None:
    results = load_results()
    key = result_key(entry["run"], entry["name"], entry["in_memory"], entry.get("code"))
    results[key] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def command(run: str, name: str, in_memory: bool = False, code: str | None = None) -> str:
    """How to rerun one measurement."""
    extra = (" --in-memory" if in_memory else "") + (f" --code {code}" if code else "")
    return f"python benchmarks/bench_scale.py --run {run} --only {name}{extra}"


def spawn(run: str, name: str, in_memory: bool = False, timeout: float = 7200) -> dict | None:
    """One measurement in a fresh subprocess; its entry (None when it failed)."""
    cmd = [sys.executable, __file__, "--run", run, "--only", name, "--child"]
    if in_memory:
        cmd.append("--in-memory")
    if CODE:
        cmd += ["--code", CODE]
    print(f"$ {command(run, name, in_memory, CODE)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        entry = {"run": run, "name": name, "in_memory": in_memory, "code": CODE}
        entry["error"] = f"timeout {timeout}s"
        save_result(entry)
        return None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        entry = {
            "run": run,
            "name": name,
            "in_memory": in_memory,
            "code": CODE,
            "error": f"exit {proc.returncode}: " + " | ".join(tail),
            "wall_until_failure_s": time.perf_counter() - t0,
        }
        save_result(entry)
        print("  FAILED:", entry["error"], flush=True)
        return None
    entry = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"  {entry['wall_s']:.1f} s wall, {entry['cpu_s']:.1f} s CPU, "
        f"{entry['accesses_per_wall_s'] / 1e6:.1f} M accesses/s, "
        f"peak {entry['peak_rss'] / GIB:.2f} GiB",
        flush=True,
    )
    return entry


# ---- the report ---------------------------------------------------------------------------
def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _m(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:,.1f}"


def _gib(x: float | None) -> str:
    return "–" if x is None else f"{x / GIB:.2f}"


def _la(e: dict) -> str:
    a, b = e.get("load_average_start"), e.get("load_average_end")
    return "–" if not a or not b else f"{a[0]:.1f}–{b[0]:.1f}"


ANALYSIS_TEXT = {
    **{f"cache-{p}": f"cache `{p}`" for p in CACHE_POLICIES},
    "srp": "SRP, L = 4,16,64,256, with the shuffled baseline",
    "sch": "SCH segment-oracle, L = 4,16,64,256, C = 1..E",
    "repetition": "repetition (top-1, top-2, top-k overlap)",
    "load-domain": "load + domain specialization + domain CV (one counting pass)",
    "vocab-layer": "vocabulary specialization, one layer",
    "vocab-all": "vocabulary specialization, every layer",
    "coact-layer": "co-activation within one layer",
    "coact-cross": "co-activation across one layer pair",
    "saturation": "router saturation (the run against itself, prefill)",
    "localize": "localize label:code vs rest, 1000 bootstrap + 1000 permutations",
}


def _analysis_table(results: dict, run: str) -> list[str]:
    lines = [
        "| analysis | wall s | CPU s | M accesses / wall s | M accesses / CPU s | peak RSS GiB "
        "| < 4 GiB | ≥ 10M/s wall | ≥ 10M/CPU s | load avg | rerun |",
        "|---|---:|---:|---:|---:|---:|:-:|:-:|:-:|---:|---|",
    ]
    for name in ANALYSES:
        e = results.get(f"{run}/{name}")
        if e is None:
            continue
        cmd = f"`{command(run, name)}`"
        if "error" in e:
            lines.append(
                f"| {ANALYSIS_TEXT[name]} | failed: {e['error'][:80]} | | | | | ✗ | | | | {cmd} |"
            )
            continue
        mem_ok = "✓" if e["peak_rss"] < MEMORY_TARGET else "✗"
        wall_ok = cpu_ok = ""
        if name.startswith("cache-") and run == "deepseek":  # the throughput target's scope
            wall_ok = "✓" if e["accesses_per_wall_s"] >= THROUGHPUT_TARGET else "✗"
            cpu_ok = "✓" if (e["accesses_per_cpu_s"] or 0) >= THROUGHPUT_TARGET else "✗"
        lines.append(
            f"| {ANALYSIS_TEXT[name]} | {e['wall_s']:.1f} | {e['cpu_s']:.1f} | "
            f"{_m(e['accesses_per_wall_s'])} | {_m(e['accesses_per_cpu_s'])} | "
            f"{_gib(e['peak_rss'])} | {mem_ok} | {wall_ok} | {cpu_ok} | {_la(e)} | {cmd} |"
        )
    return lines


def _targets_section(results: dict) -> list[str]:
    """Each target of issue 12 this benchmark covers, met or not, from the results."""

    def done(run: str) -> list[dict]:
        return [results[f"{run}/{n}"] for n in ANALYSES if f"{run}/{n}" in results]

    lines = ["## Targets (issue 12)", ""]
    ds = done("deepseek")
    if ds:
        ok = [e for e in ds if "error" not in e]
        worst = max(ok, key=lambda e: e["peak_rss"]) if ok else None
        all_ok = len(ok) == len(ANALYSES) and worst is not None
        mem_met = all_ok and worst["peak_rss"] < MEMORY_TARGET
        lines.append(
            f"- 1M-token DeepSeek-V3-shaped run, every analysis peaks under 4 GiB: "
            f"**{'met' if mem_met else 'not met'}** ({len(ok)}/{len(ANALYSES)} analyses ran; "
            + (f"largest peak {_gib(worst['peak_rss'])} GiB, {worst['name']})." if worst else ").")
        )
        cache = [e for e in ok if e["name"].startswith("cache-")]
        if cache:
            slow_wall = min(cache, key=lambda e: e["accesses_per_wall_s"])
            slow_cpu = min(cache, key=lambda e: e["accesses_per_cpu_s"] or 0)
            wall_met = slow_wall["accesses_per_wall_s"] >= THROUGHPUT_TARGET
            cpu_met = (slow_cpu["accesses_per_cpu_s"] or 0) >= THROUGHPUT_TARGET
            lines.append(
                f"- the same run, ≥ 10M accesses/s per cache policy end to end: wall clock "
                f"**{'met' if wall_met else 'not met'}** (slowest "
                f"{slow_wall['name'].removeprefix('cache-')}: "
                f"{_m(slow_wall['accesses_per_wall_s'])}M/s at load average "
                f"{_la(slow_wall)}); per CPU second, which does not depend on the other jobs, "
                f"**{'met' if cpu_met else 'not met'}** (slowest "
                f"{slow_cpu['name'].removeprefix('cache-')}: "
                f"{_m(slow_cpu['accesses_per_cpu_s'])}M per CPU s, so at least that on one "
                "free core)."
            )
    ol = done("olmoe")
    if ol:
        ok = [e for e in ol if "error" not in e]
        worst = max(ok, key=lambda e: e["peak_rss"]) if ok else None
        met = len(ok) == len(ANALYSES) and worst is not None and worst["peak_rss"] < MEMORY_TARGET
        lines.append(
            f"- 10M-token OLMoE-shaped run, every analysis completes under 4 GiB: "
            f"**{'met' if met else 'not met'}** ({len(ok)}/{len(ANALYSES)} completed"
            + (
                f"; largest peak {_gib(worst['peak_rss'])} GiB, {worst['name']})."
                if worst
                else ")."
            )
        )
    lines.append("")
    return lines


def write_report(path: Path = REPORT) -> None:
    """benchmarks/results/scale.md from the collected results and build statistics."""
    results = load_results()
    loads = [
        x
        for e in results.values()
        if e.get("run") in ("deepseek", "olmoe") and not e.get("code")
        for x in (e.get("load_average_start", [None])[0], e.get("load_average_end", [None])[0])
        if x is not None
    ]
    load_text = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded"
    lines = [
        "# Streaming analyses at scale (issue 12)",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores, {_ram() / GIB:.0f} GiB RAM, "
        f"Python {platform.python_version()}. Shared with about six other engineers' jobs: the "
        f"1-minute load average during the measurements ranged {load_text} (per measurement "
        "below, start–end); above 2 the 2 cores were oversubscribed and wall times are "
        "inflated, so CPU seconds (all threads of the process) are given beside them.",
        "",
        "Each measurement is one fresh process through the CLI's library path: open the store "
        "read-only, `store.source(run)`, call the analysis function, reading included (after a "
        "warm-up on the run's first 4 sequences in memory, which loads numba's compiled "
        "kernels). Accesses = tokens x layers read x k. Peak RSS = the process's VmHWM "
        "(Python and its libraries take about 0.3 GiB before any reading). "
        "`OMP_WAIT_POLICY=PASSIVE`, as in bench_locality.py: numba's OpenMP threads do not "
        "spin on the shared cores.",
        "",
    ]
    lines += _targets_section(results)
    lines += _build_section()
    lines += _layout_section(results)
    for run, title in (
        ("deepseek", "1M-token DeepSeek-V3-shaped run (58 layers, top-8 of 256; 487M accesses)"),
        ("olmoe", "10M-token OLMoE-shaped run (16 layers, top-8 of 64; 1.34G accesses)"),
    ):
        if not any(k.startswith(run + "/") for k in results):
            continue
        caps = "C = 8, 16, 32, 64, 128" if run == "deepseek" else "C = 1..64"
        lines += [f"## Per analysis: {title}", "", f"Cache policies at {caps}.", ""]
        lines += _analysis_table(results, run)
        lines.append("")
    lines += _before_section(results)
    lines += _memory_section(results)
    lines += [
        "## Notes",
        "",
        "- What makes the numbers: chunks of a clustered run are read as fixed-size lists, "
        "copied layer block by layer block into a [L, N, k] array that the numba kernels walk "
        "one layer at a time; analyses that count experts do not read gate weights; the stack "
        "kernel caches every policy's priority keys (lookahead refreshes the few that change "
        "at a token boundary) and compares lookahead/Belady keys without branches; a source "
        "caps DuckDB's cache on read-only connections at 512 MiB (by default DuckDB keeps "
        "every block it reads, so a streamed 10M-token run would stay resident).",
        "- Footprint: the live data is 34–36 B per route row (the issue measured 39–54), but "
        "`finish_run` rewrites the run sorted by layer and DuckDB cannot give the old blocks "
        "back to the file system, so a store holding one run is about twice that right after "
        "clustering (the free blocks are reused by the next runs written to it; a copy with "
        "`COPY FROM DATABASE` into a new file compacts it).",
        "- Cache capacities do not change the time of the stack policies (one pass gives every "
        "capacity); FIFO is simulated once per capacity, which is why it is slow with all 64 "
        "capacities on the OLMoE run.",
        "- Saturation compares the run with itself (two sources over the same run): the "
        "reading and the comparison are the same work as for two different runs.",
        "",
    ]
    lines += [
        "Rerun everything: `python benchmarks/big_stores.py deepseek deepseek-small olmoe "
        "--memory-limit 8GB` (builds, cached under benchmarks/out/), then "
        "`python benchmarks/bench_scale.py --run deepseek`, `--run olmoe`, `--layout`, "
        "`--in-memory`, and `--report` (writes this file).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {path}")


def _build_section() -> list[str]:
    lines = ["## Building the stores", ""]
    rows = []
    for name in ("deepseek", "olmoe", "deepseek-small"):
        if not bs.stats_path(name).exists():
            continue
        s = bs.load_stats(name)
        sh = s["shape"]
        rows.append(
            f"| {name} ({sh['tokens']:,} tokens, {sh['layers']} layers, top-{sh['top_k']} of "
            f"{sh['experts']}) | {s['route_rows']:,} | {s['generate_wall_s']:.0f} | "
            f"{s['write_wall_s'] + s['checkpoint_wall_s']:.0f} | "
            f"{s['ingest_rows_per_wall_s'] / 1e6:.2f} M ({s['ingest_rows_per_cpu_s'] / 1e6:.2f} M/CPU s) | "
            f"{s['bytes_per_row_unclustered']:.1f} | "
            f"{s['cluster_wall_s'] + s['cluster_checkpoint_wall_s']:.0f} "
            f"({s['cluster_rows_per_wall_s'] / 1e6:.2f} M rows/s) | "
            f"{s['bytes_per_row_clustered']:.1f} | {s['peak_rss_bytes'] / GIB:.1f} |"
        )
    if not rows:
        return []
    lines += [
        "| store | route rows | generate s | write + checkpoint s | ingest rows/s | B/row before "
        "clustering | `finish_run` + checkpoint s | B/row after | builder peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Generating is the synthetic model's numpy work, not the store's. Ingest = "
        "`RoutingStore.write_batch` of about 2^20 route rows (whole sequences) per transaction "
        "plus the final CHECKPOINT. B/row = the file's bytes over route rows (tokens, sequences "
        "and runs tables included); the issue measured 39–54 B/row. "
        "Rerun: `python benchmarks/big_stores.py NAME --force --memory-limit 8GB`.",
        "",
    ]
    return lines


def _layout_section(results: dict) -> list[str]:
    rows = []
    for run in ("deepseek", "deepseek-unclustered"):
        full = {n: results.get(f"{run}/{n}") for n in READS}
        for one, all_ in (("read-layer", "read-all"), ("read-layer-sql", "read-all-sql")):
            a, b = full.get(one), full.get(all_)
            if not a or not b or "error" in a or "error" in b:
                continue
            how = "`source.chunks(layers=[0])`" if one == "read-layer" else "SQL"
            rows.append(
                f"| {run.replace('deepseek-', '').replace('deepseek', 'clustered')} | {how} | "
                f"{a['wall_s']:.2f} | {b['wall_s']:.2f} | {a['wall_s'] / b['wall_s']:.3f} | "
                f"{b['route_rows_read'] / b['wall_s'] / 1e6:.1f} | "
                f"`{command(run, one)}`, `{command(run, all_)}` |"
            )
    if not rows:
        return []
    return [
        "## Layout: one layer against a full scan (58-layer run)",
        "",
        "| layout | read | one layer s | all 58 layers s | ratio (ideal 1/58 = 0.017) | "
        "full scan M rows/s | rerun |",
        "|---|---|---:|---:|---:|---:|---|",
        *rows,
        "",
        "SQL = `SELECT experts, weights FROM routes WHERE run_id = ? [AND layer = ?]` fetched as "
        "Arrow batches; `chunks` = the analyses' reader (token rows, then route rows put in "
        "(sequence, position, layer) order as numpy arrays).",
        "",
    ]


def _before_section(results: dict) -> list[str]:
    """Measurements of another checkout's code (`--code`) beside this code's, same store."""
    rows = []
    for name in ANALYSES:
        now = results.get(f"deepseek/{name}")
        for key, before in sorted(results.items()):
            if not key.startswith(f"deepseek/{name}/code=") or not now:
                continue
            if "error" in before or "error" in now:
                continue
            rows.append(
                f"| {ANALYSIS_TEXT[name]} | {before['cpu_s']:.1f} | {now['cpu_s']:.1f} | "
                f"{before['cpu_s'] / now['cpu_s']:.2f} | {_m(before['accesses_per_cpu_s'])} | "
                f"{_m(now['accesses_per_cpu_s'])} | {_gib(before['peak_rss'])} | "
                f"{_gib(now['peak_rss'])} | `{command('deepseek', name, code=before['code'])}` |"
            )
    if not rows:
        return []
    return [
        "## Before and after this round of changes (1M-token DeepSeek-V3-shaped run)",
        "",
        "Before = the code at commit 790904f (`git archive 790904f routescope | tar -x -C DIR`, "
        "then `--code DIR`), measured on the same store after the other runs; CPU seconds "
        "(all threads), the figure least disturbed by the machine's other jobs.",
        "",
        "| analysis | CPU s before | CPU s now | speed-up | M accesses / CPU s before | "
        "now | peak GiB before | now | rerun before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
    ]


def _memory_section(results: dict) -> list[str]:
    rows = []
    for name in ANALYSES:
        mem = results.get(f"deepseek-small/{name}/in-memory")
        st = results.get(f"deepseek-small/{name}")
        if not mem or not st or "error" in mem or "error" in st:
            continue
        rows.append(
            f"| {ANALYSIS_TEXT[name]} | {mem['load_trace_s']:.1f} | {mem['wall_s']:.2f} | "
            f"{st['wall_s']:.2f} | {st['wall_s'] / mem['wall_s']:.2f} | "
            f"{st['wall_s'] / (mem['wall_s'] + mem['load_trace_s']):.2f} | "
            f"{_gib(mem['peak_rss'])} | {_gib(st['peak_rss'])} |"
        )
    if not rows:
        return []
    return [
        "## Streamed from the store vs an in-memory `Trace` (128k tokens, DeepSeek shape)",
        "",
        "| analysis | `load_trace` s | in-memory analysis s | streamed s | streamed / in-memory "
        "| streamed / (load + in-memory) | in-memory peak GiB | streamed peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "Rerun: `python benchmarks/bench_scale.py --in-memory` (both paths, each in a fresh "
        "process).",
        "",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", choices=RUNS, default=None)
    ap.add_argument("--only", default=None, help="One measurement: " + ", ".join(ANALYSES + READS))
    ap.add_argument("--in-memory", action="store_true", help="Load a Trace first (small runs).")
    ap.add_argument("--layout", action="store_true", help="One layer vs full scan, both layouts.")
    ap.add_argument("--report", action="store_true", help="Write benchmarks/results/scale.md.")
    ap.add_argument(
        "--code", default=None, help="Measure the routescope package in this directory."
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        if args.run is None:
            raise SystemExit("--only needs --run")
        entry = measure(args.run, args.only, args.in_memory)
        if args.child:
            print(json.dumps(entry))
        else:
            save_result(entry)
            print(json.dumps(entry, indent=2))
        return
    if args.child:
        raise SystemExit("--child needs --only")
    todo: list[tuple[str, str, bool]] = []
    if args.layout:
        todo += [(run, n, False) for run in ("deepseek", "deepseek-unclustered") for n in READS]
    if args.in_memory:
        todo += [("deepseek-small", n, m) for n in ANALYSES for m in (True, False)]
    if args.run:
        todo += [(args.run, n, False) for n in ANALYSES]
    for run, name, mem in todo:
        entry = spawn(run, name, mem)
        if entry is not None:
            save_result(entry)
    if args.report or todo:
        write_report()


if __name__ == "__main__":
    main()
