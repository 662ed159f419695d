"""Locality and caching: SRP and SCH against segment length and cache size, and expert-cache hit
rates per policy against capacity with the Belady bound, per layer or pooled, prefill and decode.

Every result comes from the store's results memo, keyed as `routescope analyze consistency` and
`analyze cache` key it. The defaults and keys are `routescope.analysis.summary`'s (what
`routescope summarize` computes after a collection); anything else is computed once per run and
parameters by streaming the run in bounded chunks, with a progress bar meanwhile.
"""

from __future__ import annotations

import _shared as sh
import polars as pl
import streamlit as st

from routescope.analysis import cache, summary
from routescope.analysis import policies as cache_policies
from routescope.analysis.figures_locality import cache_figure, sch_figure, srp_figure

st.title("Locality and caching")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run
with sh.guarded():
    info = sh.load_run_info(db, version, run_id)
layers = [int(x) for x in info["moe_layers"]]
where_options: list[int | None] = [None, *layers]


def _where(x: int | None) -> str:
    return "all layers pooled" if x is None else f"layer {x}"


c1, c2 = st.columns(2)
with c1:
    where = st.selectbox("Layer", where_options, format_func=_where, key="locality_layer")
with c2:
    phase = st.selectbox("Phase (SRP, SCH)", ["all", "prefill", "decode"], key="locality_phase")

st.subheader("Local routing consistency")
segs = st.multiselect(
    "Segment lengths L",
    list(summary.SEGMENT_CHOICES),
    default=list(summary.SEGMENT_LENGTHS),
    key="segment_lengths",
)
if not segs:
    st.info("Pick at least one segment length.")
    st.stop()
kind = st.radio("SCH cache", ["segment-oracle", "lookahead"], horizontal=True, key="sch_kind")
results = summary.locality_consistency(segs, phase, kind)
left, right = st.columns(2)
# each chart is drawn as soon as its result is in
with sh.guarded():
    srp_df = sh.result(db, version, run_id, results["srp"])
with left:
    sh.plot(srp_figure(srp_df, where), key="srp_chart")
with sh.guarded():
    sch_df = sh.result(db, version, run_id, results["sch"])
with right:
    sh.plot(sch_figure(sch_df, where), key="sch_chart")
st.dataframe(
    srp_df.filter(pl.col("layer").is_null() if where is None else pl.col("layer") == where),
    hide_index=True,
    key="srp_table",
)
with sh.guarded():
    rep = sh.result(db, version, run_id, results["repetition"])
st.caption("Repetition of consecutive tokens' routing (chance levels beside each rate)")
st.dataframe(rep, hide_index=True, key="repetition_table")

st.subheader("Expert-cache hit rates")
c1, c2, c3 = st.columns(3)
with c1:
    policies = st.multiselect(
        "Policies",
        list(cache_policies.default_policies()),
        default=list(cache_policies.default_policies()),
        help="; ".join(f"{p.name}: {p.description}" for p in cache_policies.registered()),
    )
with c2:
    service = st.selectbox("Service", list(cache_policies.SERVICES), key="cache_service")
with c3:
    start = st.selectbox("Start", list(cache.STARTS), key="cache_start")
with sh.guarded():  # the policies defined under this service, and belady (the bound)
    hits = sh.result(db, version, run_id, summary.locality_cache(policies, service, start))
phases = [p for p in ("prefill", "decode") if hits.filter(pl.col("phase") == p).height]
cols = st.columns(len(phases) or 1)
for col, ph in zip(cols, phases, strict=False):
    with col:
        sh.plot(cache_figure(hits, ph, where), key=f"cache_chart_{ph}")
st.caption(
    "Cold start: each sequence's first request of an expert is a miss, which caps every "
    "admitting policy below 1. `static` is different: the C experts the sequence uses most, "
    "preloaded and never replaced, so Belady does not bound it."
)
if service == "token":
    st.caption(
        "token service is the moe-lrc accounting: its 'belady' is that paper's convention, "
        "not always an upper bound."
    )
