"""Experts: load and its entropy, label × expert specialization, an expert's top tokens, its
co-activations, and its annotation (saved to expert_notes, shown wherever the expert appears).

Every number comes from the store's results memo, keyed as `routescope analyze specialization`
keys it, with the defaults and keys of `routescope.analysis.summary` (what `routescope summarize`
computes after a collection); anything else is computed once per run and parameters (load,
entropy and specialization in one streamed pass), with a progress bar meanwhile.
"""

from __future__ import annotations

import _shared as sh
import polars as pl
import streamlit as st

from routescope.analysis import specialization as spec
from routescope.analysis import summary
from routescope.analysis.figures_app import annotate_experts, entropy_figure
from routescope.analysis.figures_experts import coactivation_heatmap, domain_heatmap, load_heatmap

st.title("Experts")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run

with sh.guarded():
    info = sh.load_run_info(db, version, run_id)
    src = sh.load_source_info(db, version, run_id)
    notes = sh.load_notes(db, version, info["model_id"])
labels_by_expert = sh.note_labels(notes)
layers = [int(x) for x in info["moe_layers"]]
num_experts = int(info["num_experts"])
has_labels = bool(src.labels)

c1, c2, c3 = st.columns(3)
with c1:
    phase = st.selectbox("Phase", ["all", "prefill", "decode"], key="experts_phase")
with c2:
    layer = sh.layer_select(layers, key="experts_layer")

#: load, entropy, specialization and CV: one streamed pass, made only when one is missing
counted = summary.experts_counts(src, phase)
passes: dict = {}


def result(item: summary.PageResult):  # noqa: ANN201
    return sh.result(db, version, run_id, item, passes)


with sh.guarded():
    load = result(counted["load"])
    load_summary = result(counted["summary"])
if "expert_id" not in st.session_state:  # start with the layer's busiest expert
    at_layer = load.filter(pl.col("layer") == layer).sort("count", descending=True)
    st.session_state["expert_id"] = int(at_layer["expert"][0]) if at_layer.height else 0
with c3:
    expert = int(st.number_input("Expert", min_value=0, max_value=num_experts - 1, key="expert_id"))

st.subheader("Load")
sh.plot(annotate_experts(load_heatmap(load), labels_by_expert), key="load_heatmap")
sh.plot(entropy_figure(load_summary), key="entropy")

st.subheader(f"Specialization by label, layer {layer}")
if has_labels:
    with sh.guarded():
        domain = result(counted["domain"])
    sh.plot(
        annotate_experts(domain_heatmap(domain, layer), labels_by_expert, layer),
        key="domain_heatmap",
    )
    caption = "share of the label's tokens routed to the expert, divided by k/E (1 = uniform)"
    if "cv" in counted:  # moe-lrc's summary (two labels or more), from the same counts
        with sh.guarded():
            cv = result(counted["cv"])
        at = cv.filter(pl.col("layer") == layer)
        if at.height:
            caption += (
                f"; domain CV at this layer (std / mean of an expert's rate across labels, "
                f"averaged over experts): {at['cv_mean'][0]:.3f}, max {at['cv_max'][0]:.3f}"
            )
    st.caption(caption)
else:
    st.info("This run's sequences carry no labels; give the prompt sets a `label` to see this.")

label, note = notes.get((layer, expert), ("", ""))
title = f"Layer {layer}, expert {expert}" + (f" — {label}" if label else "")
st.subheader(title)
left, right = st.columns(2)
with left:
    st.markdown("**Top tokens** (share of the token's occurrences routed to this expert)")
    min_count = int(
        st.number_input(
            "Minimum occurrences", min_value=1, value=summary.MIN_COUNT, key="min_count"
        )
    )
    with sh.guarded():
        vocab = result(summary.experts_vocabulary(layer, phase, min_count))
    top = spec.expert_top_tokens(
        vocab.filter((pl.col("layer") == layer) & (pl.col("expert") == expert)), top=15
    )
    with sh.guarded():
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
with sh.guarded():
    co = result(summary.experts_coactivation(layer, phase))
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
