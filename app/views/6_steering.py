"""Steering: create, edit and delete presets; a playground generating with and without a preset
side by side (per-token log-prob change, which experts changed); start a steered collection."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _shared as sh
import polars as pl
import streamlit as st

from routescope.core.errors import RoutescopeError
from routescope.steering.spec import Edit, SteeringSpec

NEW = "(new preset)"


@st.cache_resource(show_spinner="Loading the model…", max_entries=2)
def _model(model: str) -> Any:
    """The run's model, loaded once per app process (torch is imported only here)."""
    from routescope.collect.runner import resolve_model_path
    from routescope.models import load_model

    return load_model(resolve_model_path(model), dtype="float32")


def _model_ref(info: dict[str, Any]) -> str:
    return str((info.get("config") or {}).get("model") or info["model_id"])


def _expert_changes(lm: Any, spec: SteeringSpec, text: str) -> pl.DataFrame:
    """Per (layer, expert): how often it is routed to on the same tokens without and with the
    preset (routing recorded by the collection engine, once plain and once with the edit)."""
    from routescope.analysis.specialization import expert_load
    from routescope.collect.engine import collect_batch
    from routescope.core.trace import Trace
    from routescope.steering.interventions import as_router_edit

    ids = [int(x) for x in lm.tokenizer(text)["input_ids"]]
    loads = []
    for edit in (None, as_router_edit(lm, spec)):
        b = collect_batch(lm, [ids], steering=edit)
        tr = Trace(
            experts=b.experts,
            weights=b.weights,
            seq_offsets=b.seq_offsets,
            num_experts=lm.num_experts,
            top_k=lm.top_k,
            layers=tuple(lm.moe_layers),
        )
        loads.append(expert_load(tr))
    return (
        loads[0]
        .select("layer", "expert", pl.col("count").alias("tokens_base"))
        .join(
            loads[1].select("layer", "expert", pl.col("count").alias("tokens_steered")),
            on=["layer", "expert"],
        )
        .with_columns((pl.col("tokens_steered") - pl.col("tokens_base")).alias("change"))
        .filter(pl.col("change") != 0)
        .sort(["layer", "change", "expert"])
    )


def steered_job_toml(
    model: str, prompts: list[str], db: str, name: str, preset: str, max_new_tokens: int
) -> str:
    """A collection job (collectors/README.md format) recording `model` under `preset`."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        f"name = {q(name)}",
        f"model = {q(model)}",
        f"db = {q(str(Path(db).resolve()))}",
        f"steering = {q(preset)}",
        f"max_new_tokens = {int(max_new_tokens)}",
    ]
    for f in prompts:
        lines += ["", "[[prompts]]", f"path = {q(str(Path(f).resolve()))}"]
    return "\n".join(lines) + "\n"


st.title("Steering")
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run
with sh.guarded():
    info = sh.load_run_info(db, version, run_id)
    presets = sh.load_presets(db, version, info["model_id"])
    notes = sh.note_labels(sh.load_notes(db, version, info["model_id"]))
shape = sh.model_shape(info)
read_only = sh.is_parquet(db)

# ---- presets ---------------------------------------------------------------------------------
st.subheader("Presets")
sh.show_flash()
if presets.height:
    listing = presets.select("name", "edits", "mode", "layers", "spec", "updated_at")
    st.dataframe(listing, hide_index=True, key="presets_table")
else:
    st.caption(f"No presets for {info['model_id']} yet; create one below or from Localization.")

names = presets["name"].to_list()
if "_next_preset" in st.session_state:  # set after a save/delete, applied before the widget
    st.session_state["preset_choice"] = st.session_state.pop("_next_preset")
choice = st.selectbox("Preset to edit", [NEW, *names], key="preset_choice")
current = (
    SteeringSpec.from_json(presets.filter(pl.col("name") == choice)["spec"][0])
    if choice != NEW
    else SteeringSpec()
)
preset_id = None if choice == NEW else presets.filter(pl.col("name") == choice)["preset_id"][0]

all_experts = [f"L{layer}/e{e}" for layer in shape.moe_layers for e in range(shape.num_experts)]


def _fmt(key: str) -> str:
    layer, e = (int(x) for x in key[1:].split("/e"))
    label = notes.get((layer, e))
    return f"{key} · {label}" if label else key


def _keys(action: str) -> list[str]:
    return [f"L{x.layer}/e{x.expert}" for x in current.edits if x.action == action]


suffix = preset_id or "new"
with st.form(f"preset_form_{suffix}"):
    name = st.text_input("Name", value="" if choice == NEW else choice, key=f"pname_{suffix}")
    off = st.multiselect(
        "Deactivate", all_experts, default=_keys("deactivate"), format_func=_fmt,
        key=f"poff_{suffix}",
    )  # fmt: skip
    on = st.multiselect(
        "Activate (force into the top-k)", all_experts, default=_keys("activate"),
        format_func=_fmt, key=f"pon_{suffix}",
    )  # fmt: skip
    scaled_now = [x for x in current.edits if x.action == "scale"]
    c1, c2 = st.columns([3, 1])
    scaled = c1.multiselect(
        "Scale gate weight", all_experts, default=_keys("scale"), format_func=_fmt,
        key=f"pscale_{suffix}",
    )  # fmt: skip
    factor = c2.number_input(
        "factor", min_value=0.0, value=scaled_now[0].factor if scaled_now else 0.5, step=0.1,
        key=f"pfactor_{suffix}",
    )  # fmt: skip
    c1, c2 = st.columns(2)
    mode = c1.selectbox(
        "Deactivation mode", ["reroute", "drop"], index=["reroute", "drop"].index(current.mode),
        key=f"pmode_{suffix}",
        help="reroute: removed before top-k, the next expert fills the slot; drop: weight zeroed",
    )  # fmt: skip
    renorm = c2.checkbox(
        "renormalize (drop mode)", value=current.renormalize, key=f"prenorm_{suffix}"
    )
    submitted = st.form_submit_button(
        "Create preset" if choice == NEW else "Save preset", disabled=read_only
    )
if submitted:

    def _edit(key: str, action: str) -> Edit:
        layer, e = (int(x) for x in key[1:].split("/e"))
        return Edit(layer, e, action, float(factor) if action == "scale" else 1.0)

    edits = [_edit(k, "deactivate") for k in off] + [_edit(k, "activate") for k in on]
    edits += [_edit(k, "scale") for k in scaled]
    with sh.guarded():
        spec = SteeringSpec.from_edits(edits, mode=mode, renormalize=renorm).validate(shape)
        sh.save_preset(db, name, info["model_id"], spec, preset_id)
    sh.flash(f"{'Created' if choice == NEW else 'Saved'} preset {name.strip()!r}.")
    st.session_state["_next_preset"] = name.strip()
    st.rerun()

if choice != NEW:
    c1, c2 = st.columns([1, 3])
    sure = c2.checkbox(f"Yes, delete {choice!r}", key="confirm_delete")
    if c1.button("Delete preset", key="delete_preset", disabled=read_only or not sure):
        with sh.guarded():
            sh.delete_preset(db, str(preset_id))
        sh.flash(f"Deleted preset {choice!r}.")
        st.session_state["_next_preset"] = NEW
        st.rerun()

# ---- playground ------------------------------------------------------------------------------
st.subheader("Playground")
if not names:
    st.caption("Create a preset to try it here.")
else:
    model_ref = _model_ref(info)
    with st.form("playground"):
        prompt = st.text_area("Prompt", value="", key="play_prompt")
        c1, c2 = st.columns(2)
        play_preset = c1.selectbox("Preset", names, key="play_preset")
        max_new = int(c2.number_input("New tokens", 1, 200, 16, key="play_tokens"))
        go = st.form_submit_button("Generate with and without the preset")
    if go:
        from routescope.steering.evaluate import side_by_side

        spec = SteeringSpec.from_json(presets.filter(pl.col("name") == play_preset)["spec"][0])
        try:
            lm = _model(model_ref)
            with st.spinner("Generating…"):
                sbs = side_by_side(lm, spec, prompt, max_new_tokens=max_new)
                changes = _expert_changes(lm, spec, prompt + sbs.steered_text)
            st.session_state["play_result"] = (play_preset, sbs, changes)
        except RoutescopeError as exc:
            sh.show_error(exc)
            st.caption(f"The playground loads the run's model ({model_ref}) in this process.")
    result = st.session_state.get("play_result")
    if result is not None:
        used, sbs, changes = result
        left, right = st.columns(2)
        left.markdown("**Without the preset**")
        left.code(sbs.prompt + sbs.base_text, language=None, wrap_lines=True)
        right.markdown(f"**With {used}**")
        right.code(sbs.prompt + sbs.steered_text, language=None, wrap_lines=True)
        from routescope.analysis.figures_app import logprob_change_figure

        sh.plot(logprob_change_figure(sbs.tokens), key="logprob_change")
        st.dataframe(sbs.tokens, hide_index=True, key="play_tokens_table")
        st.markdown(
            "**Experts whose use changed** (same tokens, routed without and with the preset)"
        )
        st.dataframe(changes, hide_index=True, key="expert_changes")

# ---- steered collection ----------------------------------------------------------------------
st.subheader("Steered collection")
st.caption(
    "Records the routing of the run's model under a preset into this database, in a background "
    "`routescope collect` process. DuckDB lets one process write at a time: pages may wait while "
    "the job commits a batch."
)
if names:
    with st.form("collect_form"):
        prompts = st.text_input("Prompt file(s) (space-separated)", key="collect_prompts")
        c1, c2, c3 = st.columns(3)
        c_preset = c1.selectbox("Preset", names, key="collect_preset")
        c_name = c2.text_input("Run name", value=f"{run_id}-steered", key="collect_name")
        c_new = int(c3.number_input("New tokens per prompt", 0, 512, 0, key="collect_new"))
        start = st.form_submit_button("Start collection", disabled=read_only)
    if start:
        files = shlex.split(prompts)
        missing = [f for f in files if not Path(f).is_file()]
        if not files or missing:
            st.error(
                f"prompt file(s) not found: {', '.join(missing)}"
                if missing
                else "give at least one prompt file (.jsonl, .csv, .parquet or .txt)"
            )
        else:
            work = Path(tempfile.mkdtemp(prefix="routescope-collect-"))
            job = work / "steered.toml"
            job.write_text(
                steered_job_toml(_model_ref(info), files, db, c_name, c_preset, c_new),
                encoding="utf-8",
            )
            cmd = [sys.executable, "-m", "routescope", "collect", str(job), "--quiet"]
            log = work / "collect.log"
            with log.open("w") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            st.session_state.setdefault("jobs", []).append((proc, str(log), shlex.join(cmd)))
    for proc, log, cmd in st.session_state.get("jobs", []):
        code = proc.poll()
        status = "running" if code is None else ("finished" if code == 0 else f"failed ({code})")
        with st.expander(f"job {proc.pid}: {status}", expanded=code not in (None, 0)):
            st.code(cmd, language="bash")
            text = Path(log).read_text(errors="replace")[-2000:] if Path(log).exists() else ""
            st.code(text or "(no output yet)", language=None)
