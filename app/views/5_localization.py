"""Localization: which experts fire more on a target token set than on a control set (risk
difference with prompt-bootstrap CI and permutation q-values), and a button that turns the top of
the ranking into a steering preset.

The ranking comes from the store's results memo, keyed as `routescope localize` keys it, with the
defaults and keys of `routescope.analysis.summary` (what `routescope summarize` computes after a
collection: the first target set against the rest); anything else is computed once per run and
parameters (the run streamed in bounded chunks into per-prompt counts, then resampled), with a
progress bar meanwhile.
"""

from __future__ import annotations

import _shared as sh
import polars as pl
import streamlit as st

from routescope.analysis import localization as lo
from routescope.analysis import summary
from routescope.analysis.figures_app import annotate_experts
from routescope.analysis.figures_experts import rd_heatmap
from routescope.steering.spec import SteeringSpec

st.title("Localization")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run
with sh.guarded():
    src = sh.load_source_info(db, version, run_id, summary.LOCALIZE_PHASE)
    info = sh.load_run_info(db, version, run_id)
    notes = sh.note_labels(sh.load_notes(db, version, info["model_id"]))
    has_target = sh.has_target_spans(db, version, run_id)

targets = summary.localization_targets(src, has_target)
if not targets:
    st.info(
        "Localization needs a target token set: labels, several prompt sets, or target spans. "
        "This run has none; collect prompts with a `label` or `target` column."
    )
    st.stop()

c1, c2, c3, c4 = st.columns(4)
with c1:
    target = st.selectbox("Target", targets, key="loc_target")
controls = ["rest"] + [x for x in targets if x != target and x != "target"]
with c2:
    control = st.selectbox(
        "Control", controls, key="loc_control", help="'rest': every other token of the run"
    )
with c3:
    n_boot = int(
        st.number_input("Bootstrap resamples", 50, 5000, summary.N_BOOT, step=50, key="n_boot")
    )
with c4:
    n_perm = int(st.number_input("Permutations", 50, 5000, summary.N_PERM, step=50, key="n_perm"))
weight = st.toggle("Score by mean gate weight instead of selection rate", key="loc_weight")

with sh.guarded():
    result = sh.result(
        db, version, run_id, summary.localization(target, control, n_boot, n_perm, weight)
    )

st.caption(
    f"target {target}: {int(result['n1'][0]):,} tokens in {int(result['prompts1'][0])} prompts; "
    f"control {control}: {int(result['n2'][0]):,} tokens in {int(result['prompts2'][0])} prompts"
)
ranked = result.with_columns(
    pl.struct("layer", "expert")
    .map_elements(lambda r: notes.get((r["layer"], r["expert"]), ""), return_dtype=pl.Utf8)
    .alias("note")
).select(
    "rank", "layer", "expert", "note", "score", "rd", "ci_low", "ci_high", "q_value",
    "p1", "p2", "n1", "n2",
)  # fmt: skip
st.dataframe(ranked.head(50), hide_index=True, key="ranking")
sh.plot(
    annotate_experts(rd_heatmap(result, title=f"{'Weight' if weight else 'Risk'} difference, "
                                f"{target} vs {control}"), notes),
    key="rd_heatmap",
)  # fmt: skip

st.subheader("Turn the selection into a steering preset")
c1, c2, c3, c4 = st.columns(4)
with c1:
    top = int(st.number_input("Top experts", 1, 200, 4, key="preset_top"))
with c2:
    q_max = float(st.number_input("q ≤", 0.0, 1.0, 0.05, step=0.01, key="preset_q"))
with c3:
    action = st.selectbox("Action", ["deactivate", "activate"], key="preset_action")
with c4:
    preset_name = st.text_input(
        "Preset name", value=f"{target.replace(':', '-')}-top{top}", key="preset_name"
    )
with sh.guarded():
    spec_dict = lo.steering_spec_from_ranking(result, top=top, action=action, q_max=q_max)
st.caption(
    f"{len(spec_dict['edits'])} expert(s) pass: "
    + ", ".join(f"L{e['layer']}/e{e['expert']}" for e in spec_dict["edits"])
)
if st.button(
    "Create steering preset",
    key="create_preset_from_ranking",
    disabled=not spec_dict["edits"] or sh.is_parquet(db),
):
    with sh.guarded():
        spec = SteeringSpec.from_dict(spec_dict).validate(sh.model_shape(info))
        sh.save_preset(db, preset_name, info["model_id"], spec)
    sh.flash(f"Created preset {preset_name!r}; edit or try it on the Steering page.")
    st.rerun()
sh.show_flash()
