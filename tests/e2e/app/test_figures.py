"""The locality figures, one builder each for the CLI's overview and the app's one-layer view:
which rows each `layer` choice draws, trace names, the bound's style, one panel per phase."""

from __future__ import annotations

import polars as pl
import pytest

from routescope.analysis import figures_locality as fl

LAYERS = [1, 3]


def srp_frame() -> pl.DataFrame:
    """SRP rows as `consistency.srp` returns them: per layer and pooled (layer null)."""
    rows = []
    for layer, base in ((1, 0.5), (3, 0.6), (None, 0.55)):
        for seg in (16, 4):  # out of order: the figure sorts by L
            rows.append(
                {
                    "layer": layer,
                    "segment_length": seg,
                    "srp": base + seg / 100,
                    "srp_shuffled": base,
                    "floor": 0.2,
                }
            )
    return pl.DataFrame(rows, schema_overrides={"layer": pl.Int64})


def cache_frame() -> pl.DataFrame:
    """Hit rates as `cache.cache_hit_rates` returns them: per phase, layer (and pooled), policy."""
    rows = []
    for phase in ("prefill", "decode"):
        for layer in (*LAYERS, None):
            for policy, rate in (("belady", 0.9), ("lru", 0.5), ("fifo", 0.4)):
                for cap in (4, 2):
                    rows.append(
                        {
                            "phase": phase,
                            "layer": layer,
                            "policy": policy,
                            "capacity": cap,
                            "hit_rate": rate * cap / 4 - (0.1 if layer == 3 else 0),
                        }
                    )
    return pl.DataFrame(rows, schema_overrides={"layer": pl.Int64})


def test_srp_every_layer_pooled_or_one_layer():
    df = srp_frame()
    overview = fl.srp_figure(df, title="SRP — run r")  # what the CLI's --plot draws
    names = [t.name for t in overview.data]
    assert names == ["layer 1", "layer 3", "SRP (pooled)", "shuffled order", "floor 2r/(1+r)"]
    assert overview.layout.title.text == "SRP — run r"
    assert overview.layout.xaxis.type == "log"
    pooled = fl.srp_figure(df, None)
    assert [t.name for t in pooled.data] == ["SRP", "shuffled order", "floor 2r/(1+r)"]
    assert list(pooled.data[0].x) == [4, 16] and list(pooled.data[0].y) == pytest.approx(
        [0.59, 0.71]
    )
    assert pooled.layout.title.text == "Segment Routing best Performance, all layers pooled"
    one = fl.srp_figure(df, 3)
    assert list(one.data[0].y) == pytest.approx([0.64, 0.76])
    assert one.layout.title.text.endswith("layer 3")


def test_cache_one_panel_per_phase_or_one_phase_and_layer():
    df = cache_frame()
    overview = fl.cache_figure(df, title="hits")  # the CLI: pooled rows, a panel per phase
    assert [a.text for a in overview.layout.annotations] == ["prefill", "decode"]
    assert [t.name for t in overview.data] == ["lru", "fifo", "belady (bound)"] * 2
    assert [t.showlegend for t in overview.data] == [True] * 3 + [False] * 3
    assert {t.xaxis for t in overview.data} == {"x", "x2"}
    one = fl.cache_figure(df, "decode", 3)  # the app: one phase, one layer
    names = [t.name for t in one.data]
    assert names == ["lru", "fifo", "belady (bound)"]
    bound = one.data[-1]
    assert bound.line.dash == "dash" and bound.line.color == "black" and bound.mode == "lines"
    assert list(bound.x) == [2, 4] and list(bound.y) == pytest.approx([0.35, 0.8])
    title = one.layout.title.text
    assert title == "Expert-cache hit rate by policy, decode, layer 3"
    assert title.split(", ")[1] == "decode"  # the app test reads the phase from the title
    no_bound = fl.cache_figure(df, "prefill", None, bound=None)
    assert [t.name for t in no_bound.data] == ["belady", "lru", "fifo"]


def test_sch_lines_per_segment_length():
    rows = [
        {"layer": layer, "segment_length": seg, "capacity": c, "hit_rate": 0.1 * c, "order": o,
         "kind": "segment-oracle"}
        for layer in (1, None)
        for seg in (8, 2)
        for c in (1, 2)
        for o in ("original", "shuffled")
    ]  # fmt: skip
    fig = fl.sch_figure(pl.DataFrame(rows, schema_overrides={"layer": pl.Int64}), 1)
    assert [t.name for t in fig.data] == ["L = 2", "L = 8"]
    assert all(len(t.x) == 2 for t in fig.data)  # the shuffled order is left out
    assert fig.layout.title.text == "Segment Cache best Hit rate (segment-oracle), layer 1"


def test_one_builder_each():
    """The figures exist once: the app's module no longer defines its own copies."""
    from routescope.analysis import figures_app

    for name in ("srp_figure", "sch_figure", "cache_figure"):
        assert not hasattr(figures_app, name), name
