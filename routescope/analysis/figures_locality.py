"""Plotly figures for routing locality: SRP against segment length, hit rate against capacity."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from routescope.core.errors import InvalidParameterError


def srp_figure(srp_df: pl.DataFrame, title: str = "Segment Routing best Performance") -> go.Figure:
    """SRP against segment length: pooled (bold), each layer (faint), shuffled baseline, floor."""
    fig = go.Figure()
    for (layer,), grp in srp_df.filter(pl.col("layer").is_not_null()).group_by(
        ["layer"], maintain_order=True
    ):
        grp = grp.sort("segment_length")
        fig.add_trace(
            go.Scatter(
                x=grp["segment_length"].to_list(),
                y=grp["srp"].to_list(),
                mode="lines",
                line={"width": 1},
                opacity=0.35,
                name=f"layer {layer}",
                legendgroup="layers",
            )
        )
    pooled = srp_df.filter(pl.col("layer").is_null()).sort("segment_length")
    if pooled.height:
        x = pooled["segment_length"].to_list()
        fig.add_trace(
            go.Scatter(
                x=x,
                y=pooled["srp"].to_list(),
                mode="lines+markers",
                name="SRP (pooled)",
                line={"width": 3},
            )
        )
        if "srp_shuffled" in pooled.columns:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=pooled["srp_shuffled"].to_list(),
                    mode="lines+markers",
                    name="shuffled order",
                    line={"dash": "dash"},
                )
            )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=pooled["floor"].to_list(),
                mode="lines",
                name="floor 2r/(1+r)",
                line={"dash": "dot", "color": "gray"},
            )
        )
    fig.update_layout(
        title=title, xaxis_title="segment length L", yaxis_title="SRP (F1)", template="plotly_white"
    )
    fig.update_xaxes(type="log")
    return fig


def cache_figure(df: pl.DataFrame, title: str = "Expert-cache hit rate") -> go.Figure:
    """Hit rate against capacity, one line per policy, one panel per phase (pooled rows)."""
    rows = df.filter(pl.col("layer").is_null())
    phases = rows["phase"].unique(maintain_order=True).to_list() or ["all"]
    fig = make_subplots(rows=1, cols=len(phases), subplot_titles=phases, shared_yaxes=True)
    for col, phase in enumerate(phases, start=1):
        sub = rows.filter(pl.col("phase") == phase)
        for (policy,), grp in sub.group_by(["policy"], maintain_order=True):
            grp = grp.sort("capacity")
            fig.add_trace(
                go.Scatter(
                    x=grp["capacity"].to_list(),
                    y=grp["hit_rate"].to_list(),
                    mode="lines+markers",
                    name=str(policy),
                    legendgroup=str(policy),
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="capacity C (experts per layer)", row=1, col=col)
    fig.update_yaxes(title_text="hit rate", range=[0, 1], row=1, col=1)
    fig.update_layout(title=title, template="plotly_white")
    return fig


def write_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write .html always; .png only when kaleido is importable (else one clear error line)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        from routescope.analysis.figures_experts import write_html

        write_html([fig], path)  # self-contained: opens offline
    elif suffix == ".png":
        try:
            import kaleido  # noqa: F401
        except ImportError:
            raise InvalidParameterError(
                f"cannot write {path}: PNG export needs kaleido (pip install kaleido); "
                "use a .html file instead"
            ) from None
        fig.write_image(path)
    else:
        raise InvalidParameterError(f"cannot write {path}: use a .html (or .png) file name")
    return path
