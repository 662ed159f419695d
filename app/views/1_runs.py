"""Runs: every run in the store, and the picked run's metadata."""

from __future__ import annotations

import _shared as sh
import polars as pl
import streamlit as st

st.title("Runs")
db = sh.db_path()
run = sh.current_run()
if run is None:
    st.stop()
db, version, run_id = run

with sh.guarded():
    runs = sh.load_runs(db, version)
    info = sh.load_run_info(db, version, run_id)
    presets = sh.load_presets(db, version)
preset_names = dict(zip(presets["preset_id"], presets["name"], strict=True))
runs = runs.with_columns(
    pl.col("steering_id").replace(preset_names)  # a preset's name; a spec file stays a path
)

table = runs.with_columns(
    pl.col("moe_layers").list.len().alias("moe_layers"),
    pl.col("labels").list.join(", ").alias("labels"),
).select(
    "run_id",
    "name",
    "model_id",
    "family",
    pl.col("num_layers").alias("layers"),
    "moe_layers",
    pl.col("num_experts").alias("E"),
    pl.col("top_k").alias("k"),
    "tokens",
    "sequences",
    "labels",
    "status",
    pl.col("steering_id").alias("steering preset"),
    "created_at",
)
st.dataframe(table, hide_index=True, key="runs_table")
st.caption(f"{runs.height} run(s) in `{db}`; pick one in the sidebar to explore it.")

st.subheader(f"Run {run_id}")
cols = st.columns(5)
cols[0].metric("tokens", f"{info['tokens']:,}")
cols[1].metric("sequences", f"{info['sequences']:,}")
cols[2].metric("MoE layers", len(info["moe_layers"]))
cols[3].metric("experts E / top-k", f"{info['num_experts']} / {info['top_k']}")
cols[4].metric("decode tokens", f"{info['decode_tokens']:,}")
meta = {k: v for k, v in info.items() if k not in ("config", "versions")}
meta["moe_layers"] = list(meta.get("moe_layers") or [])
left, right = st.columns(2)
with left:
    st.markdown("**Metadata**")
    st.json({k: (str(v) if k == "created_at" else v) for k, v in meta.items()}, expanded=True)
with right:
    st.markdown("**Job config**")
    st.json(info.get("config") or {}, expanded=False)
    st.markdown("**Library versions**")
    st.json(info.get("versions") or {}, expanded=False)
