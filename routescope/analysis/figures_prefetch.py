"""Plotly figures for prefetch predictability and the offloading what-if (CLI `--plot` and the
dashboard's Prefetch page): recall by layer, recall by distance, tokens/s against GPU memory.

Builders take the frames `routescope.analysis.prefetch.prefetch_recall` and
`routescope.analysis.offload.offload_whatif` return and compute nothing but layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from routescope.analysis.figures_locality import write_figure

__all__ = [
    "distance_figure",
    "recall_figure",
    "throughput_figure",
    "write_figure",
]


def _phases(df: pl.DataFrame, phase: str | None) -> list[str]:
    if phase is not None:
        return [phase]
    return df["phase"].unique(maintain_order=True).to_list() or ["all"]


def _width(df: pl.DataFrame, width: int | None) -> int | None:
    """The width shown: the one asked for, else the smallest in the frame."""
    if width is not None or df.height == 0:
        return width
    return int(df.select(pl.col("width").min()).item())


def recall_figure(
    df: pl.DataFrame,
    width: int | None = None,
    phase: str | None = None,
    predictors: Sequence[str] | None = None,
    metric: str = "recall",
    title: str | None = None,
) -> go.Figure:
    """recall@m (or precision@m) against MoE layer, one line per predictor (each distance its
    own line), one panel per phase; the chance level m/E dotted."""
    m = _width(df, width)
    rows = df.filter(pl.col("layer").is_not_null() & (pl.col("width") == m))
    if predictors is not None:
        rows = rows.filter(pl.col("predictor").is_in(list(predictors)))
    phases = _phases(rows, phase)
    fig = make_subplots(rows=1, cols=len(phases), subplot_titles=phases if phase is None else None)
    names = rows["predictor"].unique(maintain_order=True).to_list()
    for col, ph in enumerate(phases, start=1):
        sub = rows.filter(pl.col("phase") == ph)
        for name in names:
            s = sub.filter(pl.col("predictor") == name).sort("layer")
            if not s.height:
                continue
            fig.add_trace(
                go.Scatter(
                    x=s["layer"].to_list(),
                    y=s[metric].to_list(),
                    mode="lines+markers",
                    name=str(name),
                    legendgroup=str(name),
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        if sub.height and metric == "recall":
            layers = sorted(sub["layer"].unique().to_list())
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=[float(sub["chance"][0])] * len(layers),
                    mode="lines",
                    name="chance (m/E)",
                    legendgroup="chance",
                    showlegend=col == 1,
                    line={"color": "grey", "dash": "dot"},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="MoE layer", dtick=1, row=1, col=col)
        fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    fig.update_yaxes(title_text=f"{metric}@{m}", row=1, col=1)
    fig.update_layout(
        title=title or f"Prefetch {metric}@{m} by layer (tokens with a prediction)",
        template="plotly_white",
    )
    return fig


def distance_figure(
    df: pl.DataFrame,
    width: int | None = None,
    phase: str | None = None,
    title: str | None = None,
) -> go.Figure:
    """Pooled recall@m against the distance d of the predictors that have one (speculative-d,
    transition-d: one line per family), with the distance-free predictors as flat dashed lines,
    one panel per phase."""
    m = _width(df, width)
    rows = df.filter(pl.col("layer").is_null() & (pl.col("width") == m))
    phases = _phases(rows, phase)
    fig = make_subplots(rows=1, cols=len(phases), subplot_titles=phases if phase is None else None)
    for col, ph in enumerate(phases, start=1):
        sub = rows.filter(pl.col("phase") == ph)
        with_d = sub.filter(pl.col("distance").is_not_null()).with_columns(
            pl.col("predictor").str.replace(r"-\d+$", "").alias("family")
        )
        ds = sorted(with_d["distance"].unique().to_list()) or [1]
        for (family,), s in with_d.group_by(["family"], maintain_order=True):
            s = s.sort("distance")
            fig.add_trace(
                go.Scatter(
                    x=s["distance"].to_list(),
                    y=s["recall"].to_list(),
                    mode="lines+markers",
                    name=f"{family}-d",
                    legendgroup=str(family),
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        for r in sub.filter(pl.col("distance").is_null()).to_dicts():
            fig.add_trace(
                go.Scatter(
                    x=[ds[0], ds[-1]] if len(ds) > 1 else [ds[0] - 0.5, ds[0] + 0.5],
                    y=[r["recall"], r["recall"]],
                    mode="lines",
                    name=str(r["predictor"]),
                    legendgroup=str(r["predictor"]),
                    showlegend=col == 1,
                    line={"dash": "dash"},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="distance d (layers ahead)", dtick=1, row=1, col=col)
        fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    fig.update_yaxes(title_text=f"recall@{m}, all layers pooled", row=1, col=1)
    fig.update_layout(title=title or f"Prefetch recall@{m} by distance", template="plotly_white")
    return fig


def _label(row: dict) -> str:
    pred = row["predictor"]
    if pred in (None, "none"):
        return f"{row['policy']}, cache only"
    return f"{row['policy']} + {pred} (m={row['width']})"


def throughput_figure(
    df: pl.DataFrame,
    phase: str | None = None,
    policies: Sequence[str] | None = None,
    predictors: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Tokens/s against GPU memory (GB), one line per policy × predictor × width, one panel per
    phase; the all-resident (compute bound) limit as a dashed ceiling with its point, the no-cache
    limit as a point at the non-expert memory."""
    sim = df.filter(pl.col("kind") == "simulated")
    if policies is not None:
        sim = sim.filter(pl.col("policy").is_in(list(policies)))
    if predictors is not None:
        sim = sim.filter(pl.col("predictor").is_in(["none", *predictors]))
    limits = df.filter(pl.col("kind") == "limit")
    phases = _phases(df, phase)
    fig = make_subplots(rows=1, cols=len(phases), subplot_titles=phases if phase is None else None)
    for col, ph in enumerate(phases, start=1):
        sub = sim.filter(pl.col("phase") == ph)
        for _, s in sub.group_by(["policy", "predictor", "width"], maintain_order=True):
            s = s.sort("memory_gb")
            name = _label(s.row(0, named=True))
            fig.add_trace(
                go.Scatter(
                    x=s["memory_gb"].to_list(),
                    y=s["tokens_per_s"].to_list(),
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    customdata=s["capacity"].to_list(),
                    hovertemplate="C=%{customdata}: %{x:.3g} GB, %{y:.4g} tokens/s",
                ),
                row=1,
                col=col,
            )
        lim = {r["policy"]: r for r in limits.filter(pl.col("phase") == ph).to_dicts()}
        top = lim.get("all-resident")
        low = lim.get("no-cache")
        if top is not None:
            x0 = low["memory_gb"] if low is not None else 0.0
            fig.add_trace(
                go.Scatter(
                    x=[x0, top["memory_gb"]],
                    y=[top["tokens_per_s"]] * 2,
                    mode="lines+markers",
                    name="all resident (compute bound)",
                    legendgroup="all-resident",
                    showlegend=col == 1,
                    line={"color": "black", "dash": "dash"},
                    marker={"size": [0, 10]},
                ),
                row=1,
                col=col,
            )
        if low is not None:
            fig.add_trace(
                go.Scatter(
                    x=[low["memory_gb"]],
                    y=[low["tokens_per_s"]],
                    mode="markers",
                    name="no cache",
                    legendgroup="no-cache",
                    showlegend=col == 1,
                    marker={"color": "grey", "symbol": "x", "size": 10},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="GPU memory (GB)", row=1, col=col)
        fig.update_yaxes(rangemode="tozero", row=1, col=col)
    fig.update_yaxes(title_text="tokens/s", row=1, col=1)
    fig.update_layout(
        title=title or "Offloading what-if: tokens/s against GPU memory", template="plotly_white"
    )
    return fig
