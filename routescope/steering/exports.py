"""Steering presets written for serving-time tools: EasySteer's `layer_configs` JSON and a
SteerMoE-style (layer, expert, risk difference) table (docs/formats.md says where each comes from).

EasySteer's `moe_router` algorithm reads {"layer_configs": {"<layer>": {"mode": "deactivate",
"expert_ids": [...]}}}, or for a layer that forces experts in {"mode": "activate",
"activate_ids": [...], "deactivate_ids": [...]}; layers are decoder-layer indices as strings, the
same 0-based numbers routescope uses. Its deactivation masks a router logit before top-k, which is
routescope's `reroute` mode; a `drop`-mode or `scale` edit has no EasySteer equivalent and is
refused in one line rather than exported as something else.

SteerMoE's notebooks rank experts by risk difference from per-(layer, expert) counts: a1/a2
(tokens of each set that selected the expert), d1/d2 (that did not), a1_n = a1/(a1+d1), a2_n,
risk_diff = a1_n − a2_n, risk_diff_abs, sorted by |risk_diff|. `steermoe_table` writes a preset's
edits in those columns; the counts come from a localization (routescope.analysis.localization's
frame: n1, a1, n2, a2), or from the preset's meta (`meta["scores"]`, rows of layer, expert, a1,
n1, a2, n2) when it was saved from one; without either the count columns are null.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl

from routescope.core.errors import InvalidParameterError
from routescope.steering.spec import SteeringSpec

EXPORT_FORMATS = ("easysteer", "steermoe")


def easysteer_layer_configs(spec: SteeringSpec) -> dict[str, Any]:
    """The preset as EasySteer's `layer_configs` mapping (a JSON-able dict)."""
    scale = [e for e in spec.edits if e.action == "scale"]
    if scale:
        raise InvalidParameterError(
            f"EasySteer's moe_router has no per-expert weight scaling ({scale[0].describe()}); "
            "export a preset of deactivate/activate edits"
        )
    if spec.mode != "reroute" and any(e.action == "deactivate" for e in spec.edits):
        raise InvalidParameterError(
            "EasySteer deactivates an expert before top-k (routescope's reroute mode); this "
            f"preset uses mode {spec.mode!r}, which it cannot express"
        )
    configs: dict[str, Any] = {}
    for layer in spec.layers():
        off = spec.experts(layer, "deactivate")
        on = spec.experts(layer, "activate")
        if on:
            entry: dict[str, Any] = {"mode": "activate", "activate_ids": on}
            if off:
                entry["deactivate_ids"] = off
        else:
            entry = {"mode": "deactivate", "expert_ids": off}
        configs[str(layer)] = entry
    return {"layer_configs": configs}


def steermoe_table(spec: SteeringSpec, localization: pl.DataFrame | None = None) -> pl.DataFrame:
    """The preset's edits as SteerMoE's risk-difference table (one row per edited expert)."""
    counts = _counts(spec, localization)
    rows = []
    for e in spec.edits:
        c = counts.get((e.layer, e.expert))
        row: dict[str, Any] = {"layer": e.layer, "expert": e.expert, "action": e.action}
        if c is None:
            row.update(a1=None, a2=None, d1=None, d2=None, a1_n=None, a2_n=None, risk_diff=None)
        else:
            a1, n1, a2, n2 = c
            row.update(
                a1=a1,
                a2=a2,
                d1=n1 - a1,
                d2=n2 - a2,
                a1_n=a1 / n1 if n1 else None,
                a2_n=a2 / n2 if n2 else None,
            )
            row["risk_diff"] = (
                None if row["a1_n"] is None or row["a2_n"] is None else row["a1_n"] - row["a2_n"]
            )
        rows.append(row)
    schema = {
        "layer": pl.Int64,
        "expert": pl.Int64,
        "action": pl.Utf8,
        "a1": pl.Int64,
        "a2": pl.Int64,
        "d1": pl.Int64,
        "d2": pl.Int64,
        "a1_n": pl.Float64,
        "a2_n": pl.Float64,
        "risk_diff": pl.Float64,
    }
    frame = pl.DataFrame(rows, schema=schema)
    return frame.with_columns(pl.col("risk_diff").abs().alias("risk_diff_abs")).sort(
        ["risk_diff_abs", "layer", "expert"], descending=[True, False, False], nulls_last=True
    )


def steermoe_table_from_localization(localization: pl.DataFrame) -> pl.DataFrame:
    """Every (layer, expert) of a `localize` result in SteerMoE's columns, by |risk_diff|."""
    need = {"layer", "expert", "a1", "n1", "a2", "n2"}
    missing = need - set(localization.columns)
    if missing:
        raise InvalidParameterError(f"not a localization result: missing {sorted(missing)}")
    return (
        localization.select(
            pl.col("layer").cast(pl.Int64),
            pl.col("expert").cast(pl.Int64),
            pl.col("a1").cast(pl.Int64),
            pl.col("a2").cast(pl.Int64),
            (pl.col("n1") - pl.col("a1")).cast(pl.Int64).alias("d1"),
            (pl.col("n2") - pl.col("a2")).cast(pl.Int64).alias("d2"),
            (pl.col("a1") / pl.col("n1")).alias("a1_n"),
            (pl.col("a2") / pl.col("n2")).alias("a2_n"),
        )
        .with_columns((pl.col("a1_n") - pl.col("a2_n")).alias("risk_diff"))
        .with_columns(pl.col("risk_diff").abs().alias("risk_diff_abs"))
        .sort(["risk_diff_abs", "layer", "expert"], descending=[True, False, False])
    )


def _counts(
    spec: SteeringSpec, localization: pl.DataFrame | None
) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """(layer, expert) → (a1, n1, a2, n2) from a localization frame or the preset's meta."""
    out: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    if localization is not None:
        rows = localization.select("layer", "expert", "a1", "n1", "a2", "n2").iter_rows()
    else:
        rows = (
            (r["layer"], r["expert"], r["a1"], r["n1"], r["a2"], r["n2"])
            for r in spec.meta.get("scores", []) or []
            if isinstance(r, dict) and {"layer", "expert", "a1", "n1", "a2", "n2"} <= set(r)
        )
    for layer, expert, a1, n1, a2, n2 in rows:
        out[(int(layer), int(expert))] = (int(a1), int(n1), int(a2), int(n2))
    return out


def export_preset(spec: SteeringSpec, fmt: str, localization: pl.DataFrame | None = None) -> str:
    """The preset as text in `fmt` (easysteer: JSON; steermoe: CSV)."""
    if fmt == "easysteer":
        return json.dumps(easysteer_layer_configs(spec), indent=2) + "\n"
    if fmt == "steermoe":
        return steermoe_table(spec, localization).write_csv()
    raise InvalidParameterError(
        f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}"
    )
