"""Locality and caching: SRP and SCH against segment length and cache size, and expert-cache hit
rates per policy against capacity with the Belady bound, per layer or pooled, prefill and decode.

Every result comes from the store's results memo, keyed as `routescope analyze consistency` and
`analyze cache` key it: computed once per run and parameters by streaming the run in bounded
chunks, with a progress bar meanwhile.
"""

from __future__ import annotations

import _shared as sh
import polars as pl
import streamlit as st

from routescope.analysis import cache, consistency
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


#: The page's defaults are `routescope analyze consistency`'s and `analyze cache`'s, so a run
#: analyzed with the CLI's defaults opens here from the memo without computing anything.
SEGMENT_DEFAULT = [4, 16, 64, 256]
c1, c2 = st.columns(2)
with c1:
    where = st.selectbox("Layer", where_options, format_func=_where, key="locality_layer")
with c2:
    phase = st.selectbox("Phase (SRP, SCH)", ["all", "prefill", "decode"], key="locality_phase")

st.subheader("Local routing consistency")
segs = st.multiselect(
    "Segment lengths L",
    [2, 4, 8, 16, 32, 64, 128, 256, 512],
    default=SEGMENT_DEFAULT,
    key="segment_lengths",
)
if not segs:
    st.info("Pick at least one segment length.")
    st.stop()
kind = st.radio("SCH cache", ["segment-oracle", "lookahead"], horizontal=True, key="sch_kind")
segs = sorted(segs)
left, right = st.columns(2)
# each chart is drawn as soon as its result is in (keyed like the CLI: fn's full arguments, the
# source narrowed to the phase)
with sh.guarded():
    srp_df = sh.analysis(
        db, version, run_id, consistency.srp, "SRP", read_phase=phase,
        segment_lengths=segs, phase=phase,
    )  # fmt: skip
with left:
    sh.plot(srp_figure(srp_df, where), key="srp_chart")
with sh.guarded():
    sch_df = sh.analysis(
        db, version, run_id, consistency.sch, "SCH", read_phase=phase,
        segment_lengths=segs, kind=kind, phase=phase,
    )  # fmt: skip
with right:
    sh.plot(sch_figure(sch_df, where), key="sch_chart")
st.dataframe(
    srp_df.filter(pl.col("layer").is_null() if where is None else pl.col("layer") == where),
    hide_index=True,
    key="srp_table",
)
with sh.guarded():
    rep = sh.analysis(
        db, version, run_id, consistency.repetition_rates, "Repetition", read_phase=phase,
        phase=phase,
    )  # fmt: skip
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
# only the policies the policy table defines under this service
policies = [p for p in policies if cache_policies.get_policy(p)[0].allows(service)]
if "belady" not in policies:
    policies = [*policies, "belady"]  # the bound is always drawn
with sh.guarded():  # every phase read: the analysis splits prefill and decode itself
    hits = sh.analysis(
        db, version, run_id, cache.cache_hit_rates, "Simulating expert caches",
        policies=policies, service=service, start=start,
    )  # fmt: skip
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
