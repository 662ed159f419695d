"""Plotly figures the dashboard needs beyond `figures_experts` and `figures_locality`: token
routing, load entropy, log-probability changes, and expert annotations in hover text.

Builders take numpy arrays or the polars frames the analyses return and give back
`plotly.graph_objects.Figure`s; they compute nothing but layout (no streamlit here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.colors as pc
import plotly.graph_objects as go
import polars as pl

#: (layer, expert) → short label of the expert, from the store's expert_notes table.
Notes = Mapping[tuple[int, int], str]


def expert_colors(num_experts: int) -> list[str]:
    """One distinct colour per expert id (cycled qualitative palettes)."""
    base = pc.qualitative.Dark24 + pc.qualitative.Light24 + pc.qualitative.Alphabet
    return [base[i % len(base)] for i in range(num_experts)]


def _note(notes: Notes | None, layer: int, expert: int) -> str:
    label = (notes or {}).get((int(layer), int(expert)))
    return f" [{label}]" if label else ""


def token_cell_text(
    experts: np.ndarray, weights: np.ndarray, layer: int, notes: Notes | None = None
) -> str:
    """'e3 0.41 [label], e7 0.22' for one token's k experts at one layer (rank order)."""
    return ", ".join(
        f"e{int(e)} {float(w):.2f}{_note(notes, layer, int(e))}"
        for e, w in zip(experts, weights, strict=True)
    )


def token_route_text(
    experts: np.ndarray,
    weights: np.ndarray,
    layers: Sequence[int],
    notes: Notes | None = None,
    sep: str = "<br>",
) -> str:
    """All experts and weights of one token at every layer: experts/weights are [L, k]."""
    return sep.join(
        f"L{layer}: {token_cell_text(experts[i], weights[i], layer, notes)}"
        for i, layer in enumerate(layers)
    )


def token_route_heatmap(
    experts: np.ndarray,
    weights: np.ndarray,
    layers: Sequence[int],
    tokens: Sequence[str],
    num_experts: int,
    notes: Notes | None = None,
) -> go.Figure:
    """Token × layer heatmap of one sequence's top-1 expert ids ([T, L, k] arrays); hovering a
    cell shows its layer's experts and weights (bold), then the token and its experts and weights
    at every layer.

    The every-layer listing is stored once per token, as the token's (categorical) x value,
    not once per cell: the figure stays small (a cell's text is its own layer only), which keeps
    wide models' pages fast in the browser.
    """
    t, n_layers, _ = experts.shape
    z = experts[:, :, 0].T.astype(float)  # [L, T]
    per_token = [
        f"pos {i} {tokens[i]!r}<br>{token_route_text(experts[i], weights[i], layers, notes)}"
        for i in range(t)
    ]  # unique: the position leads
    text = [
        [
            f"<b>layer {layer}: {token_cell_text(experts[i, j], weights[i, j], layer, notes)}</b>"
            for i in range(t)
        ]
        for j, layer in enumerate(layers)
    ]
    colors = expert_colors(num_experts)
    scale = (
        [[0.0, colors[0]], [1.0, colors[0]]]
        if num_experts <= 1
        else [
            [v, c] for e, c in enumerate(colors) for v in (e / num_experts, (e + 1) / num_experts)
        ]
    )
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=per_token,
            y=[str(x) for x in layers],
            zmin=-0.5,
            zmax=num_experts - 0.5,
            colorscale=scale,
            text=text,
            hovertemplate="%{text}<br>%{x}<extra></extra>",
            colorbar={"title": "top-1 expert"},
        )
    )
    fig.update_layout(
        title="Top-1 expert per token and layer (hover: all experts and weights)",
        xaxis={
            "title": "token",
            "type": "category",
            "tickmode": "array",
            "tickvals": per_token,
            "ticktext": [str(s) for s in tokens],
        },
        yaxis_title="layer",
        height=max(260, 28 * n_layers + 160),
    )
    return fig


def token_html(
    tokens: Sequence[str],
    top1: np.ndarray,
    titles: Sequence[str],
    num_experts: int,
) -> str:
    """The sequence's text as HTML spans, each token's background the colour of its top-1 expert
    and its tooltip (title) the given text; the legend shows which colour is which expert."""
    import html

    colors = expert_colors(num_experts)
    visible = [t.replace("\n", "↵").replace("\t", "→") or "∅" for t in tokens]
    spans = [
        f'<span class="rs-tok" title="{html.escape(title)}" '
        f'style="background:{colors[int(e)]};color:white;padding:1px 2px;margin:1px;'
        f'border-radius:3px;white-space:pre">{html.escape(tok)}</span>'
        for tok, e, title in zip(visible, top1, titles, strict=True)
    ]
    used = sorted({int(e) for e in top1})
    legend = " ".join(
        f'<span style="background:{colors[e]};color:white;padding:0 4px;border-radius:3px">'
        f"e{e}</span>"
        for e in used
    )
    return (
        f'<div class="rs-text" style="line-height:2.0;font-family:monospace">{"".join(spans)}</div>'
        f'<div style="margin-top:6px;font-size:0.8em">top-1 expert: {legend}</div>'
    )


def entropy_figure(summary: pl.DataFrame) -> go.Figure:
    """Per-layer normalized load entropy (1 = balanced) from `load_summary`, with max/mean."""
    layers = [str(x) for x in summary["layer"].to_list()]
    fig = go.Figure(
        go.Bar(
            x=layers,
            y=summary["entropy_norm"].to_list(),
            name="entropy / log E",
            customdata=np.stack(
                [summary["max_over_mean"].to_numpy(), summary["unused_experts"].to_numpy()], axis=1
            ),
            hovertemplate="layer %{x}<br>entropy/log E %{y:.3f}<br>max/mean %{customdata[0]:.2f}"
            "<br>unused experts %{customdata[1]}<extra></extra>",
        )
    )
    fig.update_layout(
        title="Load entropy per layer (normalized by log E)",
        xaxis_title="layer",
        yaxis={"title": "entropy / log E", "range": [0, 1.05]},
    )
    return fig


def annotate_experts(fig: go.Figure, notes: Notes | None, layer: int | None = None) -> go.Figure:
    """Add expert labels from expert_notes to the hover text of the heatmaps in `fig` whose x axis
    is the expert: layer × expert maps (y = layer), or, with `layer` given, maps of one layer
    (y = label or another expert)."""
    if not notes:
        return fig
    for tr in fig.data:
        if not isinstance(tr, go.Heatmap) or tr.x is None or tr.y is None:
            continue
        xs, ys = list(tr.x), list(tr.y)
        old = tr.text
        hover = []
        for i, y in enumerate(ys):
            row = []
            for j, x in enumerate(xs):
                base = (
                    str(old[i][j])
                    if old is not None and len(old) > i
                    else f"{y} · expert {x}<br>value {tr.z[i][j]:.4g}"
                )
                try:
                    key = (int(layer if layer is not None else y), int(x))
                except (TypeError, ValueError):
                    key = None
                label = notes.get(key) if key is not None else None
                row.append(base + (f"<br>note: {label}" if label else ""))
            hover.append(row)
        tr.update(text=hover, hoverinfo="text")
    return fig


def logprob_change_figure(tokens: pl.DataFrame) -> go.Figure:
    """Per generated token, log p(steered) − log p(base), one bar group per continuation (from
    `steering.evaluate.side_by_side`'s token table); hover shows the token and both log-probs."""
    fig = go.Figure()
    for which in ("base", "steered"):
        sub = tokens.filter(pl.col("which") == which).sort("step")
        if not sub.height:
            continue
        fig.add_trace(
            go.Bar(
                x=sub["step"].to_list(),
                y=sub["change"].to_list(),
                name=f"{which} continuation",
                customdata=np.stack(
                    [
                        np.asarray(sub["token"].to_list(), dtype=object),
                        sub["logp_base"].to_numpy(),
                        sub["logp_steered"].to_numpy(),
                    ],
                    axis=1,
                ),
                hovertemplate="step %{x} %{customdata[0]}<br>log p base %{customdata[1]:.3f}"
                "<br>log p steered %{customdata[2]:.3f}<br>change %{y:+.3f}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Per-token log-probability change (steered − base)",
        xaxis_title="generated token",
        yaxis_title="Δ log p",
        barmode="group",
    )
    return fig
