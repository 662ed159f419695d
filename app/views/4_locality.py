"""Locality and caching: SRP and SCH against segment length and cache size, and expert-cache hit
rates per policy against capacity with the Belady bound, per layer or pooled, prefill and decode."""

from __future__ import annotations

from typing import Any

import _shared as sh
import polars as pl
import streamlit as st

from routescope.analysis import cache, consistency
from routescope.analysis import policies as cache_policies
from routescope.analysis.figures_locality import cache_figure, sch_figure, srp_figure


def _stored(db: str, version: str, run_id: str, fn: Any, **kwargs: Any) -> pl.DataFrame:
    """fn over the run's trace, through the store's analysis cache (shared with the CLI)."""
    return sh.read(
        db,
        lambda s: s.memo_analysis(run_id, fn, lambda: sh.load_trace(db, version, run_id), **kwargs),
    )


@st.cache_data(show_spinner="Computing SRP…")
def _srp(db: str, version: str, run_id: str, phase: str, segs: tuple[int, ...]) -> pl.DataFrame:
    return _stored(db, version, run_id, consistency.srp, segment_lengths=segs, phase=phase)


@st.cache_data(show_spinner="Computing SCH…")
def _sch(
    db: str, version: str, run_id: str, phase: str, segs: tuple[int, ...], kind: str
) -> pl.DataFrame:
    return _stored(
        db, version, run_id, consistency.sch, segment_lengths=segs, kind=kind, phase=phase
    )


@st.cache_data(show_spinner="Computing repetition rates…")
def _repetition(db: str, version: str, run_id: str, phase: str) -> pl.DataFrame:
    return _stored(db, version, run_id, consistency.repetition_rates, phase=phase)


@st.cache_data(show_spinner="Simulating expert caches…")
def _cache(
    db: str, version: str, run_id: str, policies: tuple[str, ...], service: str, start: str
) -> pl.DataFrame:
    return _stored(
        db, version, run_id, cache.cache_hit_rates, policies=policies, service=service, start=start
    )


st.title("Locality and caching")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run
with sh.guarded():
    trace = sh.load_trace(db, version, run_id)
layers = list(trace.layers)
where_options: list[int | None] = [None, *layers]


def _where(x: int | None) -> str:
    return "all layers pooled" if x is None else f"layer {x}"


c1, c2 = st.columns(2)
with c1:
    where = st.selectbox("Layer", where_options, format_func=_where, key="locality_layer")
with c2:
    phase = st.selectbox("Phase (SRP, SCH)", ["prefill", "decode", "all"], key="locality_phase")

st.subheader("Local routing consistency")
segs = st.multiselect(
    "Segment lengths L",
    [2, 4, 8, 16, 32, 64, 128, 256],
    default=[2, 4, 8, 16],
    key="segment_lengths",
)
if not segs:
    st.info("Pick at least one segment length.")
    st.stop()
kind = st.radio("SCH cache", ["segment-oracle", "lookahead"], horizontal=True, key="sch_kind")
with sh.guarded():
    srp_df = _srp(db, version, run_id, phase, tuple(sorted(segs)))
    sch_df = _sch(db, version, run_id, phase, tuple(sorted(segs)), kind)
    rep = _repetition(db, version, run_id, phase)
left, right = st.columns(2)
with left:
    sh.plot(srp_figure(srp_df, where), key="srp_chart")
with right:
    sh.plot(sch_figure(sch_df, where), key="sch_chart")
st.dataframe(
    srp_df.filter(pl.col("layer").is_null() if where is None else pl.col("layer") == where),
    hide_index=True,
    key="srp_table",
)
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
with sh.guarded():
    hits = _cache(db, version, run_id, tuple(policies), service, start)
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
