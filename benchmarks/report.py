"""Assemble BENCHMARKS.md from the per-topic results each benchmark script writes.

Run the benchmarks first (each writes benchmarks/results/<topic>.md), then:
    python benchmarks/report.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
ORDER = ["collect_overhead", "ingest", "locality", "experts"]
SCRIPTS = {
    "collect_overhead": "bench_collect_overhead.py",
    "ingest": "bench_ingest.py",
    "locality": "bench_locality.py",
    "experts": "bench_experts.py",
}


def main() -> None:
    results = ROOT / "results"
    found = {p.stem: p for p in sorted(results.glob("*.md"))}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    parts = [
        "# Benchmarks\n",
        "Ratios and throughput measured in one run each, on the machine named in each section "
        "(these machines: 2 cores, no GPU). Timed numbers are never test assertions. To rerun one: "
        "`python benchmarks/<script>`; then `python benchmarks/report.py` rebuilds this file.\n",
    ]
    for name in names:
        script = SCRIPTS.get(name, f"bench_{name}.py")
        parts.append(f"<!-- from benchmarks/results/{name}.md (script: benchmarks/{script}) -->\n")
        text = found[name].read_text(encoding="utf-8").strip()
        # one heading level down, so each topic is a section of BENCHMARKS.md
        text = "\n".join("#" + ln if ln.startswith("#") else ln for ln in text.splitlines())
        parts.append(text + "\n")
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(parts), encoding="utf-8")
    print(f"wrote BENCHMARKS.md from {len(names)} result file(s)")


if __name__ == "__main__":
    main()
