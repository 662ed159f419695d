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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

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
    from routescope.core.source import InMemorySource
    from routescope.store.store import RoutingStore

    store_name, path = _store_of(run)
    shape = bs.SHAPES[store_name]
    load0 = os.getloadavg()
    entry: dict[str, Any] = {"run": run, "name": name, "in_memory": in_memory, "db": str(path)}
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


def save_result(entry: dict[str, Any]) -> None:
    results = load_results()
    key = f"{entry['run']}/{entry['name']}" + ("/in-memory" if entry["in_memory"] else "")
    results[key] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def command(run: str, name: str, in_memory: bool = False) -> str:
    """How to rerun one measurement."""
    extra = " --in-memory" if in_memory else ""
    return f"python benchmarks/bench_scale.py --run {run} --only {name}{extra}"


def spawn(run: str, name: str, in_memory: bool = False, timeout: float = 7200) -> dict | None:
    """One measurement in a fresh subprocess; its entry (None when it failed)."""
    cmd = [sys.executable, __file__, "--run", run, "--only", name, "--child"]
    if in_memory:
        cmd.append("--in-memory")
    print(f"$ {command(run, name, in_memory)}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        entry = {"run": run, "name": name, "in_memory": in_memory, "error": f"timeout {timeout}s"}
        save_result(entry)
        return None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        entry = {
            "run": run,
            "name": name,
            "in_memory": in_memory,
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


def write_report(path: Path = REPORT) -> None:
    """benchmarks/results/scale.md from the collected results and build statistics."""
    results = load_results()
    lines = [
        "# Streaming analyses at scale (issue 12)",
        "",
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores, {_ram() / GIB:.0f} GiB RAM, "
        f"Python {platform.python_version()}; shared with about six other engineers' jobs while "
        "measured (load average per measurement below: start–end; above 2 means the 2 cores "
        "were oversubscribed, so wall times are inflated and CPU seconds are the steadier "
        "number).",
        "",
    ]
    lines += _build_section()
    lines += _layout_section(results)
    for run, title in (
        ("deepseek", "1M-token DeepSeek-V3-shaped run (58 layers, top-8 of 256; 464M accesses)"),
        ("olmoe", "10M-token OLMoE-shaped run (16 layers, top-8 of 64; 1.34G accesses)"),
    ):
        if not any(k.startswith(run + "/") for k in results):
            continue
        lines += [f"## Per analysis: {title}", ""]
        lines += _analysis_table(results, run)
        lines.append("")
    lines += _memory_section(results)
    lines += [
        "Each measurement is one fresh process: open the store read-only, `store.source(run)`, "
        "call the analysis function as the CLI does, reading included (warm-up on 4 sequences "
        "first, reported apart). Accesses = tokens x layers read x k. Peak RSS = the process's "
        "VmHWM (Python, numpy, DuckDB's buffers, the chunk and the aggregates).",
        "",
        "Rerun everything: `python benchmarks/big_stores.py deepseek deepseek-small olmoe` "
        "(builds, cached), then `python benchmarks/bench_scale.py --run deepseek`, "
        "`--run olmoe`, `--layout`, `--in-memory`, and `--report` (writes this file).",
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
