"""Plotly figures for specialization and localization results (used by the CLI and the app).

Builders take the polars frames returned by `specialization` / `localization` and return
`plotly.graph_objects.Figure`s; `write_html` puts several figures into one self-contained file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import polars as pl


def _grid(df: pl.DataFrame, row: str, col: str, value: str) -> tuple[list, list, np.ndarray]:
    """Pivot a long frame into (row labels, column labels, matrix) with NaN for missing cells."""
    rows = sorted(df[row].unique().to_list(), key=str)
    cols = sorted(df[col].unique().to_list())
    ri = {r: i for i, r in enumerate(rows)}
    ci = {c: i for i, c in enumerate(cols)}
    z = np.full((len(rows), len(cols)), np.nan)
    for r, c, v in zip(df[row].to_list(), df[col].to_list(), df[value].to_list(), strict=True):
        z[ri[r], ci[c]] = np.nan if v is None else v
    return rows, cols, z


def rd_heatmap(result: pl.DataFrame, title: str = "Risk difference p1 − p2") -> go.Figure:
    """Layer × expert heatmap of a `localize` result's score (diverging, centred at 0); hover
    shows p1, p2, N1, N2 and q; cells with q < 0.05 are marked with a dot."""
    layers, experts, z = _grid(result, "layer", "expert", "score")
    _, _, q = _grid(result, "layer", "expert", "q_value")
    _, _, p1 = _grid(result, "layer", "expert", "p1")
    _, _, p2 = _grid(result, "layer", "expert", "p2")
    n1, n2 = int(result["n1"][0]), int(result["n2"][0])
    text = [
        [
            f"layer {layers[i]} expert {experts[j]}<br>score {z[i, j]:+.4f}<br>"
            f"p1 {p1[i, j]:.4f} (N1={n1})<br>p2 {p2[i, j]:.4f} (N2={n2})<br>q {q[i, j]:.3g}"
            for j in range(len(experts))
        ]
        for i in range(len(layers))
    ]
    bound = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=experts,
            y=[str(x) for x in layers],
            zmin=-bound,
            zmax=bound,
            colorscale="RdBu_r",
            text=text,
            hoverinfo="text",
            colorbar={"title": "score"},
        )
    )
    sig = result.filter(pl.col("q_value") < 0.05)
    if sig.height:
        fig.add_trace(
            go.Scatter(
                x=sig["expert"].to_list(),
                y=[str(x) for x in sig["layer"].to_list()],
                mode="markers",
                marker={"color": "black", "size": 5},
                name="q < 0.05",
                hoverinfo="skip",
            )
        )
    fig.update_layout(title=title, xaxis_title="expert", yaxis_title="layer")
    return fig


def load_heatmap(
    load: pl.DataFrame, title: str = "Expert load (share of assignments)"
) -> go.Figure:
    """Layer × expert heatmap of `expert_load` shares."""
    layers, experts, z = _grid(load, "layer", "expert", "share")
    fig = go.Figure(go.Heatmap(z=z, x=experts, y=[str(x) for x in layers], colorscale="Viridis"))
    fig.update_layout(title=title, xaxis_title="expert", yaxis_title="layer")
    return fig


def domain_heatmap(
    domain: pl.DataFrame, layer: int, by: str = "label", value: str = "ratio_uniform"
) -> go.Figure:
    """Group × expert heatmap at one layer of `domain_specialization` (default: share / r, so 1 =
    uniform routing, >1 = the expert is over-used by that group)."""
    sub = domain.filter(pl.col("layer") == layer)
    groups, experts, z = _grid(sub, by, "expert", value)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=experts,
            y=[str(g) for g in groups],
            colorscale="Viridis",
            colorbar={"title": value},
        )
    )
    fig.update_layout(
        title=f"Domain specialization at layer {layer} ({value})",
        xaxis_title="expert",
        yaxis_title=by,
    )
    return fig


def coactivation_heatmap(co: pl.DataFrame) -> go.Figure:
    """expert_i × expert_j heatmap of N(i, j)/N(i) (within a layer or across consecutive layers)."""
    ei, ej, z = _grid(co, "expert_i", "expert_j", "rate")
    layer = int(co["layer"][0])
    where = (
        f"layer {layer} → {int(co['next_layer'][0])}"
        if "next_layer" in co.columns
        else (f"layer {layer}")
    )
    fig = go.Figure(go.Heatmap(z=z, x=ej, y=ei, colorscale="Viridis", zmin=0, zmax=1))
    fig.update_layout(
        title=f"Co-activation N(i,j)/N(i), {where}", xaxis_title="expert j", yaxis_title="expert i"
    )
    return fig


def write_html(figures: Sequence[go.Figure], path: str | Path) -> Path:
    """Write figures into one standalone HTML file (plotly.js embedded once, works offline)."""
    path = Path(path)
    parts = [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)
    ]
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>routescope</title></head><body>"
        + "\n".join(parts)
        + "</body></html>",
        encoding="utf-8",
    )
    return path
