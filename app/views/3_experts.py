"""Experts: load and its entropy, label × expert specialization, an expert's top tokens, its
co-activations, and its annotation (saved to expert_notes, shown wherever the expert appears)."""

from __future__ import annotations

from typing import Any

import _shared as sh
import polars as pl
import streamlit as st

from routescope.analysis import specialization as spec
from routescope.analysis.figures_app import annotate_experts, entropy_figure
from routescope.analysis.figures_experts import coactivation_heatmap, domain_heatmap, load_heatmap


def _stored(db: str, version: str, run_id: str, phase: str, fn: Any, **kwargs: Any) -> Any:
    """fn over the run's trace in one phase, through the store's analysis cache (shared with
    `routescope analyze specialization`)."""

    def load() -> Any:
        return sh.load_trace(db, version, run_id).select_phase(phase)

    sel = {"phase": phase, "layers": None}
    return sh.read(db, lambda s: s.memo_analysis(run_id, fn, load, selection=sel, **kwargs))


@st.cache_data(show_spinner="Computing expert load…")
def _load(db: str, version: str, run_id: str, phase: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (
        _stored(db, version, run_id, phase, spec.expert_load),
        _stored(db, version, run_id, phase, spec.load_summary),
    )


@st.cache_data(show_spinner="Computing domain specialization…")
def _domain(db: str, version: str, run_id: str, phase: str) -> pl.DataFrame:
    return _stored(db, version, run_id, phase, spec.domain_specialization)


@st.cache_data(show_spinner="Computing vocabulary specialization…")
def _vocab(db: str, version: str, run_id: str, phase: str, min_count: int) -> pl.DataFrame:
    return _stored(db, version, run_id, phase, spec.vocabulary_specialization, min_count=min_count)


@st.cache_data(show_spinner="Computing co-activation…")
def _coact(db: str, version: str, run_id: str, phase: str, layer: int) -> pl.DataFrame:
    return _stored(db, version, run_id, phase, spec.coactivation, layer=layer)


st.title("Experts")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run

with sh.guarded():
    info = sh.load_run_info(db, version, run_id)
    trace = sh.load_trace(db, version, run_id)
    notes = sh.load_notes(db, version, info["model_id"])
labels_by_expert = sh.note_labels(notes)
layers = list(trace.layers)

c1, c2, c3 = st.columns(3)
with c1:
    phase = st.selectbox("Phase", ["all", "prefill", "decode"], key="experts_phase")
with c2:
    layer = sh.layer_select(layers, key="experts_layer")
with sh.guarded():
    load, summary = _load(db, version, run_id, phase)
if "expert_id" not in st.session_state:  # start with the layer's busiest expert
    at_layer = load.filter(pl.col("layer") == layer).sort("count", descending=True)
    st.session_state["expert_id"] = int(at_layer["expert"][0])
with c3:
    expert = int(
        st.number_input("Expert", min_value=0, max_value=trace.num_experts - 1, key="expert_id")
    )

st.subheader("Load")
sh.plot(annotate_experts(load_heatmap(load), labels_by_expert), key="load_heatmap")
sh.plot(entropy_figure(summary), key="entropy")

st.subheader(f"Specialization by label, layer {layer}")
if trace.label_set:
    domain = _domain(db, version, run_id, phase)
    sh.plot(
        annotate_experts(domain_heatmap(domain, layer), labels_by_expert, layer),
        key="domain_heatmap",
    )
    st.caption("share of the label's tokens routed to the expert, divided by k/E (1 = uniform)")
else:
    st.info("This run's sequences carry no labels; give the prompt sets a `label` to see this.")

label, note = notes.get((layer, expert), ("", ""))
title = f"Layer {layer}, expert {expert}" + (f" — {label}" if label else "")
st.subheader(title)
left, right = st.columns(2)
with left:
    st.markdown("**Top tokens** (share of the token's occurrences routed to this expert)")
    min_count = int(st.number_input("Minimum occurrences", min_value=1, value=2, key="min_count"))
    vocab = _vocab(db, version, run_id, phase, min_count)
    top = spec.expert_top_tokens(
        vocab.filter((pl.col("layer") == layer) & (pl.col("expert") == expert)), top=15
    )
    texts = sh.load_token_strings(db, version, run_id, tuple(top["token_id"].to_list()))
    top = top.with_columns(
        pl.col("token_id").replace_strict(texts, default="?", return_dtype=pl.Utf8).alias("token")
    )
    show = [c for c in ("rank", "token", "token_id", "share", "occurrences") if c in top.columns]
    st.dataframe(top.select(show), hide_index=True, key="top_tokens")
with right:
    st.markdown(
        "**Annotation** (saved to the store's expert_notes, shared by every run of the model)"
    )
    if sh.is_parquet(db):
        st.caption("A Parquet export is read-only; open the DuckDB file to annotate experts.")
    with st.form(f"note_{layer}_{expert}"):
        new_label = st.text_input("Label", value=label, key=f"note_label_{layer}_{expert}")
        new_note = st.text_area("Note", value=note, key=f"note_text_{layer}_{expert}")
        saved = st.form_submit_button("Save annotation", disabled=sh.is_parquet(db))
    if saved:
        with sh.guarded():
            sh.save_note(db, info["model_id"], layer, expert, new_label, new_note)
        sh.flash(f"Saved the annotation of layer {layer}, expert {expert}.")
        st.rerun()
    sh.show_flash()

st.subheader(f"Co-activation at layer {layer}")
co = _coact(db, version, run_id, phase, layer)
sh.plot(annotate_experts(coactivation_heatmap(co), labels_by_expert, layer), key="coactivation")
partners = (
    co.filter(pl.col("expert_i") == expert).sort("rate", descending=True, nulls_last=True).head(5)
)
st.caption(
    f"Expert {expert}'s most frequent partners at layer {layer}: "
    + ", ".join(
        f"e{r['expert_j']} ({r['rate']:.2f})"
        for r in partners.iter_rows(named=True)
        if r["rate"] is not None
    )
)
