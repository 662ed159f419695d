"""Prefetch and offloading: how well predictors name a token's experts ahead of time (recall by
layer and by distance), and what a GPU memory budget buys in tokens/s when experts are offloaded
(per-layer caches under the chosen policies, prefetch by the chosen predictors).

Every result comes from the store's results memo, keyed as `routescope analyze prefetch` and
`routescope simulate offload` key it (defaults left as the CLI leaves them), computed once per
run and parameters by streaming the run, with a progress bar meanwhile.
"""

from __future__ import annotations

import _shared as sh
import polars as pl
import streamlit as st

from routescope.analysis import offload as ol
from routescope.analysis import prefetch as pf
from routescope.analysis import summary
from routescope.analysis.figures_prefetch import distance_figure, recall_figure, throughput_figure
from routescope.core.source import SourceInfo

SIM_POLICIES = ("lru", "lfu", "fifo", "lookahead-16", "belady")


@st.cache_data(show_spinner=False, max_entries=16)
def source_info(db: str, version: str, run_id: str) -> SourceInfo:
    """What the run holds (speculative rankings recorded?), without reading its routing."""
    return sh.read(db, lambda s: s.source(run_id).info)


@st.cache_data(show_spinner=False, max_entries=16)
def default_cost(db: str, version: str, run_id: str) -> tuple[ol.OffloadCost, str]:
    """The what-if's default cost (`summary.default_cost`: from the run's model config found on
    this machine, else stand-ins) and why stand-ins ('' when the config was found)."""
    from functools import partial

    from routescope.models.costs import run_cost

    return summary.default_cost(partial(run_cost, sh.load_run_info(db, version, run_id)))


st.title("Prefetch and offloading")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run
with sh.guarded():
    info = source_info(db, version, run_id)
k, E, n_layers = info.top_k, info.num_experts, len(info.layers)
st.caption(
    "Speculative rankings recorded for distances 1.."
    f"{info.speculative_distances} (top-{info.speculative_width})."
    if info.speculative_distances
    else "This run has no speculative rankings; record them with "
    "`routescope collect … --speculative D` to compare speculative-d predictors."
)

# ---- predictability ---------------------------------------------------------------------------------
st.subheader("How predictable is routing ahead of time?")
defaults = list(pf.default_predictors(info))
choices = [*defaults]
for p in pf.registered():
    if p.needs == "speculative" and not info.speculative_distances:
        continue
    if p.default_name not in choices:
        choices.append(p.default_name)
c1, c2, c3 = st.columns(3)
with c1:
    names = st.multiselect(
        "Predictors",
        choices,
        default=defaults,
        key="prefetch_predictors",
        help="; ".join(f"{p.name}: {p.description} (needs {p.needs})" for p in pf.registered()),
    )
with c2:
    width_opts = sorted({1, k, 2 * k, min(E, 4 * k)})
    widths = st.multiselect(
        "Widths m", width_opts, default=summary.recall_widths(info), key="prefetch_widths"
    ) or [k]
with c3:
    train_split = st.slider(
        "Train split (transition)", 0.1, 0.9, pf.DEFAULT_TRAIN_SPLIT, 0.1, key="prefetch_split"
    )
if not names:
    st.info("Pick at least one predictor.")
    st.stop()
with sh.guarded():
    recall = sh.result(
        db, version, run_id, summary.prefetch_recall(info, names, widths, float(train_split))
    )
phases = recall["phase"].unique(maintain_order=True).to_list()
c1, c2 = st.columns(2)
with c1:
    phase = st.selectbox("Phase", phases, key="prefetch_phase")
with c2:
    m = st.selectbox("Show width m", sorted(recall["width"].unique().to_list()), key="prefetch_m")
left, right = st.columns(2)
with left:
    sh.plot(recall_figure(recall, m, phase), key="recall_by_layer")
with right:
    sh.plot(distance_figure(recall, m, phase), key="recall_by_distance")
pooled = recall.filter(pl.col("layer").is_null() & (pl.col("phase") == phase))
st.dataframe(
    pooled.select(
        "predictor", "distance", "width", "coverage", "recall", "precision", "chance",
        "tokens", "evaluated_on",
    ),
    hide_index=True,
    key="recall_table",
)  # fmt: skip
st.caption(
    "recall@m = |P_m ∩ S| / k and precision@m = |P_m ∩ S| / m over the tokens with a prediction "
    "(coverage); chance = m/E. With a fitted predictor (transition) every predictor is evaluated "
    "on the held-out sequences."
)

# ---- the what-if ------------------------------------------------------------------------------------
st.subheader("What would offloading cost?")
with sh.guarded():
    why = default_cost(db, version, run_id)[1]
sim_defaults = summary.offload_predictors(info)
extra = [f"speculative-{d}" for d in range(2, info.speculative_distances + 1)]
sim_choices = [*sim_defaults, "window-8", "transition-1", *extra]
c1, c2, c3, c4 = st.columns(4)
with c1:
    policies = st.multiselect(
        "Policies", SIM_POLICIES, default=list(ol.DEFAULT_POLICIES), key="offload_policies"
    )
with c2:
    sim_names = st.multiselect(
        "Predictors (prefetch)", sim_choices, default=sim_defaults, key="offload_predictors"
    )
with c3:
    lead = int(st.number_input("Lead d (layers ahead)", 1, n_layers, 1, key="offload_lead"))
with c4:
    start = st.selectbox(
        "Start",
        list(ol.STARTS),
        key="offload_start",
        help="cold: each sequence's caches start empty; warm: preloaded with the first C "
        "experts the sequence uses (a server whose cache already holds the experts in use)",
    )
c1, c2, c3, c4 = st.columns(4)
with c1:
    bandwidth = float(
        st.number_input("Host→GPU GB/s", 0.1, 1000.0, ol.DEFAULT_BANDWIDTH_GBPS, key="offload_bw")
    )
with c2:
    expert_mb = st.number_input(
        "Expert MB (blank: model config)",
        0.0,
        1e5,
        value=summary.STANDIN_COST["expert_mb"] if why else None,
        key="offload_expert_mb",
        help="OLMoE-1B-7B's expert in bf16 is 12.58 MB",
    )
with c3:
    layer_ms = st.number_input(
        "MoE layer ms (blank: FLOPs / rate)",
        0.0,
        1e4,
        value=summary.STANDIN_COST["layer_ms"] if why else None,
        format="%.4f",
        key="offload_layer_ms",
    )
with c4:
    tflops = st.number_input("Compute TFLOP/s", 0.01, 1e4, ol.DEFAULT_TFLOPS, key="offload_tflops")
if why:
    st.caption(f"{why} — the values above stand in (OLMoE-1B-7B's expert, bf16; 1 TFLOP/s).")
if not policies:
    st.info("Pick at least one policy.")
    st.stop()
with sh.guarded():
    from routescope.models.costs import run_cost

    cost = run_cost(
        sh.load_run_info(db, version, run_id),
        expert_mb=expert_mb,
        bandwidth_gbps=bandwidth,
        tflops=None if tflops == ol.DEFAULT_TFLOPS else tflops,
        layer_ms=layer_ms,
    )
    what_if = sh.result(
        db, version, run_id,
        summary.offload_whatif(info, cost, policies, sim_names, lead, start),
    )  # fmt: skip
st.caption(f"Costs: {cost.note}; one expert loads in {cost.load_ps / 1e9:.4g} ms.")
sim_phases = what_if["phase"].unique(maintain_order=True).to_list()
cols = st.columns(len(sim_phases) or 1)
for col, ph in zip(cols, sim_phases, strict=False):
    with col:
        sh.plot(throughput_figure(what_if, ph), key=f"throughput_{ph}")
st.dataframe(
    what_if.select(
        "phase", "kind", "policy", "predictor", "width", "capacity", "memory_gb", "hit_rate",
        "tokens_per_s", "ms_per_token", "stall_s", "prefetch_loads", "useful_prefetches",
    ),
    hide_index=True,
    key="offload_table",
)  # fmt: skip
st.caption(
    "Each token is served layer by layer; a prefetch of the predictor's top m for layer l is "
    "issued when layer l − d starts and overlaps the compute in between; on-demand loads overlap "
    "nothing; one host→GPU link serves loads first come, first served. Prefill and decode are "
    "separate streams; each sequence's caches start cold or warm (Start). Limits: all experts "
    "resident "
    "(compute bound) and no cache."
)
