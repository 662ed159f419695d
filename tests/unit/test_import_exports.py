"""Exports for serving-time tools (EasySteer layer_configs, SteerMoE risk-difference table), the
per-layer expert ranking JSONL, and the importer registry's one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from routescope.analysis.rankings import expert_ranking, write_expert_ranking
from routescope.core.errors import InvalidParameterError
from routescope.importers import FORMATS, get_format
from routescope.steering.exports import (
    easysteer_layer_configs,
    export_preset,
    steermoe_table,
    steermoe_table_from_localization,
)
from routescope.steering.spec import SteeringSpec


def spec(edits, mode="reroute", meta=None):
    return SteeringSpec.from_dict({"edits": edits, "mode": mode, "meta": meta or {}})


def test_easysteer_layer_configs_hand_checked():
    s = spec(
        [
            {"layer": 3, "expert": 17, "action": "deactivate"},
            {"layer": 3, "expert": 2, "action": "deactivate"},
            {"layer": 10, "expert": 5, "action": "activate"},
            {"layer": 10, "expert": 6, "action": "deactivate"},
        ]
    )
    assert easysteer_layer_configs(s) == {
        "layer_configs": {
            "3": {"mode": "deactivate", "expert_ids": [2, 17]},
            "10": {"mode": "activate", "activate_ids": [5], "deactivate_ids": [6]},
        }
    }
    assert json.loads(export_preset(s, "easysteer"))["layer_configs"]["3"]["expert_ids"] == [2, 17]


@pytest.mark.parametrize(
    "edits, mode, match",
    [
        ([{"layer": 1, "expert": 0, "action": "scale", "factor": 0.5}], "reroute", "scaling"),
        ([{"layer": 1, "expert": 0, "action": "deactivate"}], "drop", "reroute mode"),
    ],
)
def test_easysteer_refuses_what_it_cannot_express(edits, mode, match):
    with pytest.raises(InvalidParameterError, match=match):
        easysteer_layer_configs(spec(edits, mode))


def localization_frame():
    # layer 0: expert 1 fires on 30/100 target and 10/200 control tokens, expert 0 on 5/100, 40/200
    return pl.DataFrame(
        {
            "rank": [1, 2, 3, 4],
            "layer": [0, 2, 2, 0],
            "expert": [1, 3, 0, 0],
            "n1": [100] * 4,
            "n2": [200] * 4,
            "a1": [30, 20, 10, 5],
            "a2": [10, 20, 20, 40],
            "score": [0.25, 0.1, 0.0, -0.15],
        }
    )


def test_steermoe_table_from_localization_hand_checked():
    t = steermoe_table_from_localization(localization_frame())
    first = t.row(0, named=True)
    assert (first["layer"], first["expert"]) == (0, 1)
    assert first["d1"] == 70 and first["d2"] == 190
    assert first["a1_n"] == pytest.approx(0.30) and first["a2_n"] == pytest.approx(0.05)
    assert first["risk_diff"] == pytest.approx(0.25)
    assert t["risk_diff_abs"].to_list() == pytest.approx([0.25, 0.15, 0.1, 0.0])
    assert t.row(1, named=True)["risk_diff"] == pytest.approx(-0.15)


def test_steermoe_table_of_a_preset_with_and_without_counts():
    s = spec(
        [
            {"layer": 0, "expert": 1, "action": "deactivate"},
            {"layer": 2, "expert": 3, "action": "deactivate"},
        ],
        meta={"scores": [{"layer": 0, "expert": 1, "a1": 30, "n1": 100, "a2": 10, "n2": 200}]},
    )
    t = steermoe_table(s)
    assert t["risk_diff"].to_list()[0] == pytest.approx(0.25)
    assert t["risk_diff"].to_list()[1] is None  # no counts for (2, 3): null, not invented
    full = steermoe_table(s, localization_frame())
    assert full["risk_diff"].to_list() == pytest.approx([0.25, 0.1])
    csv = export_preset(s, "steermoe")
    assert csv.splitlines()[0].startswith("layer,expert,action,a1,a2,d1,d2,a1_n,a2_n,risk_diff")
    with pytest.raises(InvalidParameterError, match="unknown export format"):
        export_preset(s, "vllm")


def test_expert_ranking_orders_each_layer_by_score(tmp_path):
    recs = expert_ranking(localization_frame())
    assert recs == [
        {"layer": 0, "metric": "score", "experts": [1, 0], "scores": [0.25, -0.15]},
        {"layer": 2, "metric": "score", "experts": [3, 0], "scores": [0.1, 0.0]},
    ]
    load = pl.DataFrame(
        {"layer": [5, 5, 5], "expert": [0, 1, 2], "count": [3, 9, 3], "share": [0.2, 0.6, 0.2]}
    )
    assert expert_ranking(load)[0]["experts"] == [1, 0, 2]  # share; ties by expert id
    assert expert_ranking(load, score="count", top=1)[0] == {
        "layer": 5,
        "metric": "count",
        "experts": [1],
        "scores": [9.0],
    }
    assert expert_ranking(load, descending=False)[0]["experts"] == [0, 2, 1]
    path = tmp_path / "rank.jsonl"
    assert write_expert_ranking(localization_frame(), path) == 2
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["layer"] for x in lines] == [0, 2] and lines[0]["experts"] == [1, 0]
    with pytest.raises(InvalidParameterError, match="no column 'rd'"):
        expert_ranking(load, score="rd")
    with pytest.raises(InvalidParameterError, match="layer and expert"):
        expert_ranking(pl.DataFrame({"x": [1]}))
    nan = localization_frame().with_columns(pl.Series("score", [np.nan, 0.1, 0.0, 0.3]))
    assert (
        expert_ranking(nan)[0]["experts"] == [0, 1] and expert_ranking(nan)[0]["scores"][1] is None
    )


def test_registry_lists_every_format_and_unknown_is_one_line():
    assert list(FORMATS) == ["vllm", "sglang", "megatron", "flame", "moe-lrc"]
    for f in FORMATS.values():
        assert f.description and f.files and callable(f.reader())
    with pytest.raises(InvalidParameterError, match="unknown trace format 'trt'.*vllm"):
        get_format("trt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from routescope.cli import main; main()",
            "import",
            "trt",
            "x",
            "--name",
            "n",
            "--db",
            "/nonexistent/x.duckdb",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown trace format 'trt'" in proc.stderr


def test_presets_export_cli(tmp_path):
    from routescope.steering.presets import create_preset
    from routescope.store import RoutingStore

    db = str(tmp_path / "p.duckdb")
    s = spec([{"layer": 1, "expert": 4, "action": "deactivate"}])
    with RoutingStore(db) as store:
        create_preset(store.con, "quiet", s)
    run = [sys.executable, "-c", "from routescope.cli import main; main()", "presets", "export"]
    out = tmp_path / "easy.json"
    proc = subprocess.run(
        [*run, "quiet", "--format", "easysteer", "--out", str(out), "--db", db],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == {
        "layer_configs": {"1": {"mode": "deactivate", "expert_ids": [4]}}
    }
    proc = subprocess.run(
        [*run, "quiet", "--format", "steermoe", "--db", db],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.splitlines()[1].startswith("1,4,deactivate")
    proc = subprocess.run(
        [*run, "quiet", "--format", "xml", "--db", db], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "unknown export format 'xml'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
