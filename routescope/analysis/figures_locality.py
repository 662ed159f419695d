"""Plotly figures for routing locality (CLI `--plot` and the dashboard's Locality page): SRP
against segment length, SCH against cache size, expert-cache hit rate against capacity.

One builder per figure: `layer` picks what is drawn (every layer faint around the pooled curve,
the pooled rows only, or one layer), so the CLI's overview and the app's one-layer view are the
same code. Builders take the polars frames `routescope.analysis.consistency` and `.cache` return
and compute nothing but layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

import plotly.graph_objects as go
import polars as pl
from plotly.subplots import make_subplots

from routescope.core.errors import InvalidParameterError

#: `layer=ALL_LAYERS`: every layer's curve (faint) around the pooled one (bold).
ALL_LAYERS: Final = "all"

#: Which rows a figure draws: ALL_LAYERS, None (pooled over layers), or one MoE layer.
LayerChoice = int | None | Literal["all"]


def _layer_rows(df: pl.DataFrame, layer: int | None) -> pl.DataFrame:
    """The pooled rows (layer None, stored with a null layer) or one layer's rows."""
    return df.filter(pl.col("layer").is_null() if layer is None else pl.col("layer") == layer)


def where_text(layer: LayerChoice) -> str:
    """What a figure shows, for its title."""
    if layer == ALL_LAYERS:
        return "each layer and pooled"
    return "all layers pooled" if layer is None else f"layer {layer}"


def srp_figure(
    srp_df: pl.DataFrame, layer: LayerChoice = ALL_LAYERS, title: str | None = None
) -> go.Figure:
    """SRP against segment length L (log axis) with the shuffled-order baseline and the c = 0 floor
    2r/(1+r) (DESIGN §4.1).

    `layer`: ALL_LAYERS draws every layer faint ("layer N") around the pooled curve ("SRP
    (pooled)"); None draws the pooled rows, an int that layer's rows (as "SRP").
    """
    traces: list[go.Scatter] = []
    if layer == ALL_LAYERS:
        per = srp_df.filter(pl.col("layer").is_not_null())
        for (lay,), grp in per.sort("layer").group_by(["layer"], maintain_order=True):
            grp = grp.sort("segment_length")
            traces.append(
                go.Scatter(
                    x=grp["segment_length"].to_list(),
                    y=grp["srp"].to_list(),
                    mode="lines",
                    line={"width": 1},
                    opacity=0.35,
                    name=f"layer {lay}",
                    legendgroup="layers",
                )
            )
        main, name = _layer_rows(srp_df, None), "SRP (pooled)"
    else:
        main, name = _layer_rows(srp_df, layer), "SRP"
    main = main.sort("segment_length")
    x = main["segment_length"].to_list()
    if main.height:
        traces.append(
            go.Scatter(
                x=x, y=main["srp"].to_list(), mode="lines+markers", name=name, line={"width": 3}
            )
        )
        if "srp_shuffled" in main.columns:
            traces.append(
                go.Scatter(
                    x=x,
                    y=main["srp_shuffled"].to_list(),
                    mode="lines+markers",
                    name="shuffled order",
                    line={"dash": "dash"},
                )
            )
        traces.append(
            go.Scatter(
                x=x,
                y=main["floor"].to_list(),
                mode="lines",
                name="floor 2r/(1+r)",
                line={"dash": "dot", "color": "gray"},
            )
        )
    fig = go.Figure(traces)
    fig.update_layout(
        title=title or f"Segment Routing best Performance, {where_text(layer)}",
        xaxis={"title": "segment length L", "type": "log"},
        yaxis={"title": "SRP (best F1)", "range": [0, 1.02]},
        template="plotly_white",
    )
    return fig


def sch_figure(
    sch_df: pl.DataFrame, layer: int | None = None, title: str | None = None
) -> go.Figure:
    """SCH hit rate against cache size C, one line per segment length ("L = 4"), for the pooled
    rows (None) or one layer; only the original token order."""
    sub = _layer_rows(sch_df, layer)
    if "order" in sub.columns:
        sub = sub.filter(pl.col("order") == "original")
    fig = go.Figure()
    for seg in sorted(sub["segment_length"].unique().to_list()):
        s = sub.filter(pl.col("segment_length") == seg).sort("capacity")
        fig.add_trace(
            go.Scatter(
                x=s["capacity"].to_list(),
                y=s["hit_rate"].to_list(),
                mode="lines+markers",
                name=f"L = {seg}",
            )
        )
    kind = str(sub["kind"][0]) if sub.height and "kind" in sub.columns else "segment-oracle"
    fig.update_layout(
        title=title or f"Segment Cache best Hit rate ({kind}), {where_text(layer)}",
        xaxis_title="cache size C (experts per layer)",
        yaxis={"title": "hit rate", "range": [0, 1.02]},
        template="plotly_white",
    )
    return fig


def cache_figure(
    hits: pl.DataFrame,
    phase: str | None = None,
    layer: int | None = None,
    bound: str | None = "belady",
    title: str | None = None,
) -> go.Figure:
    """Hit rate against cache capacity, one line per policy (in the frame's order), for the pooled
    rows (layer None) or one layer; one panel per phase (phase None) or one phase's panel.

    The `bound` policy (Belady/MIN, the optimum of admitting policies under stream service) is
    drawn last as a thick dashed black line named "<policy> (bound)".
    """
    rows = _layer_rows(hits, layer)
    phases = [phase] if phase is not None else rows["phase"].unique(maintain_order=True).to_list()
    phases = phases or ["all"]
    policies = rows["policy"].unique(maintain_order=True).to_list()
    policies.sort(key=lambda p: p == bound)  # stable: the bound last, the others in order
    fig = make_subplots(rows=1, cols=len(phases), subplot_titles=phases if phase is None else None)
    for col, ph in enumerate(phases, start=1):
        sub = rows.filter(pl.col("phase") == ph)
        for policy in policies:
            s = sub.filter(pl.col("policy") == policy).sort("capacity")
            if not s.height:
                continue
            is_bound = policy == bound
            fig.add_trace(
                go.Scatter(
                    x=s["capacity"].to_list(),
                    y=s["hit_rate"].to_list(),
                    mode="lines" if is_bound else "lines+markers",
                    name=f"{policy} (bound)" if is_bound else str(policy),
                    legendgroup=str(policy),
                    showlegend=col == 1,
                    line={"color": "black", "width": 3, "dash": "dash"} if is_bound else {},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="cache capacity C (experts per layer)", row=1, col=col)
        fig.update_yaxes(range=[0, 1.02], row=1, col=col)
    fig.update_yaxes(title_text="hit rate", row=1, col=1)
    shown = "" if phase is None else f"{phase}, "
    fig.update_layout(
        title=title or f"Expert-cache hit rate by policy, {shown}{where_text(layer)}",
        template="plotly_white",
    )
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
