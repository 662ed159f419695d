"""Write reports/prefetch_demo.md: prefetch predictability and the offloading what-if on the demo
model's runs.

    python benchmarks/report_prefetch.py [--db routescope.duckdb] [--out reports/prefetch_demo.md]

The store must hold the demo runs (`routescope demo --db PATH`, or `--split heldout` for a quicker
one); when the file does not exist this script runs `routescope demo --db PATH --split heldout`.
Speculative predictors are reported for any demo run whose speculative rankings were recorded
(`routescope collect … --speculative D`); until one exists their rows say so, and rerunning this
script fills them. Every number comes from `routescope.analysis.prefetch` and `.offload`.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from routescope.analysis import offload as ol
from routescope.analysis import prefetch as pf
from routescope.store.store import RoutingStore

ROOT = Path(__file__).resolve().parents[1]
#: The demo's routing on a model with OLMoE-1B-7B's layer widths (allenai/OLMoE-1B-7B-0924:
#: hidden 2048, expert intermediate 1024, 16 heads, bf16): each expert 3 x 2048 x 1024 x 2 B.
OLMOE_WIDTHS = {
    "hidden_size": 2048,
    "intermediate_size": 1024,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "dtype": "bfloat16",
    "torch_dtype": "bfloat16",
}
BANDWIDTH_GBPS = 25.0  # PCIe 4.0 x16 in practice
TFLOPS = 1.0  # batch-1 decode: weights read once from ~1 TB/s GPU memory
#: Each sequence's caches start holding the first C experts it uses (a serving process whose
#: cache is already full of the experts in use), not empty: the demo's sequences are short
#: (~80 tokens), so cold misses would swamp everything else.
START = "warm"


def demo_config(store: RoutingStore, run_id: str) -> dict[str, Any]:
    """The demo model's config with OLMoE-1B-7B's widths (layers, experts, k, vocab: the demo's)."""
    from routescope.models.costs import model_config

    info = store.run_info(run_id)
    base = model_config(info["model_id"]) or {
        "num_hidden_layers": info["num_layers"],
        "vocab_size": 8192,
        "tie_word_embeddings": True,
    }
    return {**base, **OLMOE_WIDTHS}


def find_runs(store: RoutingStore) -> dict[str, str]:
    """{'domains': run_id, 'behaviours': run_id} of the demo runs (full ones before heldout)."""
    names = store.runs()["run_id"].to_list()
    out = {}
    for kind in ("domains", "behaviours"):
        for cand in (f"demo-{kind}", f"demo-{kind}-heldout"):
            if cand in names:
                out[kind] = cand
                break
    return out


def speculative_runs(store: RoutingStore) -> list[str]:
    return [
        r
        for r in store.runs()["run_id"].to_list()
        if store.source(r).info.speculative_distances > 0
    ]


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def recall_table(df: pl.DataFrame, k: int, spec_note: str | None) -> list[str]:
    """Pooled recall/precision at k and 2k per phase and predictor (markdown rows)."""
    lines = [
        "| phase | predictor | coverage | recall@k | recall@2k | precision@k | precision@2k |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    pooled = df.filter(pl.col("layer").is_null())
    for (phase,), grp in pooled.group_by(["phase"], maintain_order=True):
        for (name,), rows in grp.group_by(["predictor"], maintain_order=True):
            by = {r["width"]: r for r in rows.to_dicts()}
            a, b = by.get(k, {}), by.get(2 * k, {})
            lines.append(
                f"| {phase} | {name} | {fmt(a.get('coverage'))} | {fmt(a.get('recall'))} | "
                f"{fmt(b.get('recall'))} | {fmt(a.get('precision'))} | {fmt(b.get('precision'))} |"
            )
        if spec_note:
            lines.append(f"| {phase} | speculative-1 | {spec_note} | | | | |")
    return lines


def per_layer_table(df: pl.DataFrame, k: int, phase: str) -> list[str]:
    rows = df.filter(
        pl.col("layer").is_not_null() & (pl.col("width") == k) & (pl.col("phase") == phase)
    )
    layers = sorted(rows["layer"].unique().to_list())
    lines = [
        "| predictor | " + " | ".join(f"L{x}" for x in layers) + " |",
        "|---|" + "---:|" * len(layers),
    ]
    for (name,), grp in rows.group_by(["predictor"], maintain_order=True):
        by = dict(zip(grp["layer"].to_list(), grp["recall"].to_list(), strict=True))
        lines.append(f"| {name} | " + " | ".join(fmt(by.get(x), 2) for x in layers) + " |")
    return lines


def whatif_table(df: pl.DataFrame, phase: str) -> list[str]:
    """tokens/s per cache size (rows) and policy + predictor (columns), then the limits."""
    sim = df.filter((pl.col("kind") == "simulated") & (pl.col("phase") == phase))
    cols = sim.select("policy", "predictor", "width").unique(maintain_order=True).rows()
    head = ["C", "GPU GB"] + [
        f"{p}, cache only" if pred == "none" else f"{p} + {pred}" for p, pred, _ in cols
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for (cap,), grp in sim.group_by(["capacity"], maintain_order=True):
        by = {(r["policy"], r["predictor"], r["width"]): r["tokens_per_s"] for r in grp.to_dicts()}
        cells = [fmt(by.get(c), 0) if by.get(c) is not None else "–" for c in cols]
        lines.append(f"| {cap} | {grp['memory_gb'][0]:.2f} | " + " | ".join(cells) + " |")
    lim = {
        r["policy"]: r
        for r in df.filter((pl.col("kind") == "limit") & (pl.col("phase") == phase)).to_dicts()
    }
    top, low = lim["all-resident"], lim["no-cache"]
    lines.append("")
    lines.append(
        f"Limits: all experts resident (compute bound) **{top['tokens_per_s']:.0f} tokens/s** at "
        f"{top['memory_gb']:.2f} GB; no cache (every expert loaded on demand) "
        f"**{low['tokens_per_s']:.0f} tokens/s** at {low['memory_gb']:.2f} GB."
    )
    return lines


LEADS = (1, 2, 4, 6)
#: cache sizes of the lead table, as fractions of E (8, 11, 16 of the demo's 32)
LEAD_FRACTIONS = (0.25, 0.34, 0.5)


def lead_table(src: Any, cost: ol.OffloadCost) -> list[str]:
    """tokens/s of LRU with previous-token and oracle prefetch issued 1..6 layers ahead."""
    info = src.info
    caps = sorted({max(info.top_k, round(info.num_experts * f)) for f in LEAD_FRACTIONS})
    by: dict[tuple[str, int, int], float] = {}
    for lead in [x for x in LEADS if x <= len(info.layers)]:
        df = ol.offload_whatif(
            src,
            cost,
            policies=["lru"],
            predictors=["previous-token", "oracle"],
            lead=lead,
            capacities=caps,
            phase="all",
            start=START,
        )
        for r in df.filter(pl.col("kind") == "simulated").to_dicts():
            by[(r["predictor"], lead, r["capacity"])] = r["tokens_per_s"]
    head = ["predictor", "lead d"] + [f"C={c}" for c in caps]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines.append(
        "| none (LRU only) | – | " + " | ".join(fmt(by.get(("none", 1, c)), 0) for c in caps) + " |"
    )
    for pred in ("previous-token", "oracle"):
        for lead in LEADS:
            cells = " | ".join(fmt(by.get((pred, lead, c)), 0) for c in caps)
            lines.append(f"| {pred} | {lead} | {cells} |")
    return lines


#: How this script collects the demo runs when --db does not exist (about a minute on a laptop
#: CPU each): both demo jobs, with speculative rankings for d = 1, 2 (top-2k).
COLLECT = (
    "collect collectors/demo.toml --name demo-domains --speculative 2",
    "collect collectors/demo_behaviours.toml --name demo-behaviours --max-new-tokens 8 "
    "--speculative 2",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="routescope.duckdb")
    ap.add_argument("--out", default=str(ROOT / "reports" / "prefetch_demo.md"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    if not Path(args.db).exists():
        for cmd in COLLECT:
            subprocess.run(
                [sys.executable, "-m", "routescope", *cmd.split(), "--db", args.db, "-q"],
                check=True,
            )
    with RoutingStore(args.db, read_only=True) as store:
        runs = find_runs(store)
        if not runs:
            sys.exit(f"no demo runs in {args.db}; run `routescope demo --db {args.db}` first")
        spec_runs = [r for r in speculative_runs(store) if r.startswith("demo-")]
        recall: dict[str, pl.DataFrame] = {}
        infos = {}
        for kind, run_id in runs.items():
            src = store.source(run_id)
            infos[kind] = src.info
            spec = [
                f"speculative-{d}" for d in range(1, min(2, src.info.speculative_distances) + 1)
            ]
            names = [*spec, "previous-token", "window-8", "transition-1", "transition-2", "oracle"]
            recall[kind] = pf.prefetch_recall(src, predictors=names, train_split=0.5)
        cost_run = runs.get("domains") or next(iter(runs.values()))
        info = store.run_info(cost_run)
        cost = ol.model_cost(
            demo_config(store, cost_run),
            len(info["moe_layers"]),
            int(info["top_k"]),
            int(info["num_experts"]),
            bandwidth_gbps=BANDWIDTH_GBPS,
            tflops=TFLOPS,
            bytes_per_param=2,
        )
        leads = lead_table(store.source(cost_run), cost) if "domains" in runs else []
        whatif: dict[str, pl.DataFrame] = {}
        for kind, run_id in runs.items():
            src = store.source(run_id)
            names = ["previous-token", "transition-1", "oracle"]
            if src.info.speculative_distances:
                names.insert(1, "speculative-1")
            whatif[kind] = ol.offload_whatif(
                src,
                cost,
                policies=["lru", "belady"],
                predictors=names,
                phase="all" if kind == "domains" else "split",
                start=START,
            )
    k = next(iter(infos.values())).top_k
    E = next(iter(infos.values())).num_experts
    spec_note = (
        None
        if spec_runs
        else "not recorded: no demo run in this store has speculative rankings (rerun this "
        "script after `routescope collect … --speculative 2`)"
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out: list[str] = [
        "# Prefetch predictability and the offloading what-if on the demo model",
        "",
        f"Generated by `python benchmarks/report_prefetch.py --db {Path(args.db).name}` "
        f"({when}, "
        f"{platform.machine()}, {time.perf_counter() - t0:.0f} s). Runs: "
        + ", ".join(f"`{r}`" for r in runs.values())
        + (
            f" (speculative rankings for d = 1..{infos[next(iter(infos))].speculative_distances}"
            f", top-{infos[next(iter(infos))].speculative_width}; collected as "
            + " and ".join(f"`routescope {c}`" for c in COLLECT)
            + ")"
            if not spec_note
            else " (no speculative rankings)"
        )
        + ". Definitions: DESIGN.md §9; code: `routescope.analysis.prefetch`, "
        "`routescope.analysis.offload`.",
        "",
        "## How predictable is routing ahead of time?",
        "",
        f"The demo model routes each token to k = {k} of E = {E} experts at each of its "
        f"{len(next(iter(infos.values())).layers)} MoE layers. For every token and MoE layer each predictor names a "
        "ranked list of experts before the layer runs; recall@m = |P_m ∩ S| / k, precision@m = "
        "|P_m ∩ S| / m, averaged over the tokens that have a prediction (coverage: the first token "
        "of a sequence has no previous token; transition-d has nothing for the first d layers). "
        f"m = k = {k} and 2k = {2 * k}; chance recall is m/E = {k / E:.3f} and {2 * k / E:.3f}. "
        "`transition-d` is fitted on a train half of the sequences (by sequence-id hash) and, "
        "so that rows compare on the same tokens, every predictor is evaluated on the held-out "
        "half.",
        "",
    ]
    for kind, df in recall.items():
        out += [f"### `{runs[kind]}`", ""]
        out += recall_table(df, k, spec_note)
        out.append("")
        ph = df["phase"].unique(maintain_order=True).to_list()[0]
        out += [f"recall@{k} per layer ({ph}):", ""]
        out += per_layer_table(df, k, ph)
        out.append("")
    if spec_note:
        out += [
            "Speculative predictors (layer l's router applied to layer l − d's router input, as in "
            "Pre-gated MoE / ProMoE / HOBBIT) need hidden states, so they are recorded at "
            "collection time. No demo run here holds them yet: the `speculative-1` rows are "
            "placeholders that this script fills once a demo run is collected with "
            "`--speculative 2`.",
            "",
        ]
    out += [
        "## What would offloading cost?",
        "",
        "The what-if of DESIGN §9: experts live in host memory; each MoE layer keeps C experts on "
        "the GPU; tokens are served one at a time, layer by layer; a predictor's top m = k "
        "experts for layer l are prefetched when layer l − 1 starts (overlapping that layer's "
        "compute), the rest loaded on demand (overlapping nothing); one host→GPU link serves "
        "loads first come, first served. **Warm start**: each sequence's per-layer caches "
        "begin holding the first C experts the sequence will use (as in a serving process whose "
        "cache already holds the experts in use); with empty caches the demo's short sequences "
        "(~80 tokens) would be dominated by first-use misses (`--start cold` shows that).",
        "",
        "Assumptions (stated, not measured):",
        "",
        "- **Model size**: the demo's routing (6 MoE layers, 32 experts, top-4, vocabulary 8192) "
        "on a model with **OLMoE-1B-7B's layer widths** (hidden 2048, expert intermediate 1024, "
        f"16 heads, bf16), so each expert is 3 × 2048 × 1024 × 2 B = "
        f"**{cost.expert_bytes / 1e6:.2f} MB** (an OLMoE-1B-7B expert); non-expert weights "
        f"{cost.nonexpert_bytes / 1e9:.2f} GB.",
        f"- **Bandwidth**: {BANDWIDTH_GBPS:g} GB/s host→GPU (PCIe 4.0 x16 in practice): one "
        f"expert loads in **{cost.load_ps / 1e9:.3f} ms**.",
        f"- **Compute**: {TFLOPS:g} TFLOP/s effective (a batch-1 decode step reads every active "
        "weight once from ~1 TB/s of GPU memory); 2 × active parameters per MoE layer "
        f"(attention, router, 4 experts) = **{cost.layer_ms:.3f} ms per MoE layer**, plus "
        f"{cost.other_ms:.3f} ms per token for the LM head.",
        f"- Memory = C × 6 layers × {cost.expert_bytes / 1e6:.2f} MB + non-expert weights.",
        "",
    ]
    for kind, df in whatif.items():
        phases = df["phase"].unique(maintain_order=True).to_list()
        for ph in phases:
            what = (
                "every token of the prompts served one at a time (the domain run has no generated "
                "tokens; this is how a batch-1 decode would see the same routing)"
                if ph == "all"
                else f"the {ph} stream of each sequence"
            )
            where = df["evaluated_on"][0]
            out += [
                f"### `{runs[kind]}`, {ph}: tokens/s against GPU memory",
                "",
                f"{what}; {where} sequences (a fitted predictor is included).",
                "",
            ]
            out += whatif_table(df, ph)
            out.append("")
    if leads:
        out += [
            f"### How far ahead? `{runs['domains']}`, LRU, prefetch issued d layers ahead",
            "",
            "A prefetch issued d layers before its use overlaps d layers of compute (across the "
            "token boundary for predictors that need no hidden state of the token itself; the "
            "recorded speculative rankings could not reach back that far). Tokens/s, all "
            "sequences of the run:",
            "",
        ]
        out += leads
        out.append("")
    if spec_note:
        out += [
            "Speculative prefetch is left out of the what-if until a run with recorded rankings "
            "exists (rerun this script then: `speculative-1` columns appear).",
            "",
        ]
    out += summary(recall, whatif, cost, k, E)
    Path(args.out).write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


def summary(recall: dict, whatif: dict, cost: ol.OffloadCost, k: int, E: int) -> list[str]:
    """A few sentences read off the tables (numbers, not adjectives)."""
    lines = ["## Reading", ""]
    dom = recall.get("domains")
    if dom is not None:
        pooled = dom.filter(pl.col("layer").is_null() & (pl.col("width") == k))
        by = {r["predictor"]: r["recall"] for r in pooled.to_dicts()}
        cov = {r["predictor"]: r["coverage"] for r in pooled.to_dicts()}
        spec = by.get("speculative-1")
        if spec is not None:
            lines.append(
                f"- `speculative-1` (layer l's router on layer l − 1's input) names the most: "
                f"recall@{k} {spec:.3f} on the {cov['speculative-1']:.0%} of token-layers it "
                f"covers (none for the first layer); at distance 2 "
                f"{by.get('speculative-2', float('nan')):.3f}."
            )
        best = max(
            (v, n)
            for n, v in by.items()
            if n != "oracle" and not n.startswith("speculative") and v is not None
        )
        lines.append(
            f"- From routing alone (no hidden states), the best predictor on the domain run is "
            f"`{best[1]}`: "
            f"recall@{k} {best[0]:.3f} on the {cov[best[1]]:.0%} of token-layers it covers, "
            f"against a chance level of {k / E:.3f} (previous-token "
            f"{by.get('previous-token', float('nan')):.3f}, window-8 "
            f"{by.get('window-8', float('nan')):.3f})."
        )
    wi = whatif.get("domains")
    if wi is not None:
        sim = wi.filter(pl.col("kind") == "simulated")
        lim = {r["policy"]: r for r in wi.filter(pl.col("kind") == "limit").to_dicts()}
        caps = sorted(sim["capacity"].unique().to_list())
        mid = caps[len(caps) // 2]

        def at(policy: str, pred: str) -> float:
            row = sim.filter(
                (pl.col("policy") == policy)
                & (pl.col("predictor") == pred)
                & (pl.col("capacity") == mid)
            )
            return float(row["tokens_per_s"][0])

        lines.append(
            f"- At C = {mid} experts per layer ({mid / E:.0%} of the experts on the GPU), LRU "
            f"alone gives {at('lru', 'none'):.0f} tokens/s, with oracle prefetch "
            f"{at('lru', 'oracle'):.0f}, Belady (future-knowing eviction) alone "
            f"{at('belady', 'none'):.0f}; the compute-bound ceiling is "
            f"{lim['all-resident']['tokens_per_s']:.0f} and no cache gives "
            f"{lim['no-cache']['tokens_per_s']:.0f}."
        )
        row = sim.filter(
            (pl.col("policy") == "lru")
            & (pl.col("predictor") == "none")
            & (pl.col("capacity") == mid)
        ).row(0, named=True)
        misses = row["demand_loads"] / row["tokens"]
        link_ms = misses * cost.load_ps / 1e9
        lines.append(
            f"- There LRU misses {misses:.1f} of the {row['requests'] / row['tokens']:.0f} expert "
            f"requests per token; moving them keeps the link busy {link_ms:.2f} ms per token, so "
            f"prefetch that only hides those loads cannot pass {1e3 / link_ms:.0f} tokens/s "
            f"(oracle prefetch: {at('lru', 'oracle'):.0f}). At small caches the link, not "
            "prediction, is the bound; prediction pays where loads are few enough to hide "
            "behind compute."
        )
        spec_rows = sim.filter(
            (pl.col("policy") == "lru")
            & (pl.col("predictor") == "speculative-1")
            & (pl.col("capacity") == mid)
        )
        if spec_rows.height:
            r = spec_rows.row(0, named=True)
            wasted = 1 - r["useful_prefetches"] / max(r["prefetch_loads"], 1)
            lines.append(
                f"- Speculative prefetch into the same cache does not pay here: LRU + "
                f"speculative-1 at C = {mid} gives {r['tokens_per_s']:.0f} tokens/s against "
                f"{at('lru', 'none'):.0f} without prefetch. {wasted:.0%} of its loads are never "
                "used before eviction; each wrong guess costs a full expert load on the shared "
                "link, ahead of the on-demand loads (first come, first served), and evicts an "
                "expert LRU would have kept. Systems that cancel or deprioritize prefetches, or "
                "prefetch into a separate buffer, would fare better than this model."
            )
        lines.append(
            f"- One expert load ({cost.load_ps / 1e9:.3f} ms) costs about "
            f"{cost.load_ps / 1e9 / cost.layer_ms:.1f} layers of compute, so a one-layer lead "
            "hides only a fraction of each prefetched load: misses, not prediction, dominate "
            "until most experts fit on the GPU."
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    main()
