"""`routescope analyze prefetch` and `routescope simulate offload`: JSON equals the library on the
same store, figures are written, results are memoized, user errors are one line."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import polars as pl
import pytest
from test_store import LAYERS, batch_of, make_seq, new_run
from typer.testing import CliRunner

from routescope.analysis import offload as ol
from routescope.analysis import prefetch as pf
from routescope.cli._app import app
from routescope.store.store import RoutingStore


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """Run 'spec' with speculative rankings (D = 2, m = 4), run 'plain' without."""
    rng = np.random.default_rng(9)
    path = str(tmp_path_factory.mktemp("pf") / "pf.duckdb")
    seqs = [make_seq(rng, 5 + i % 4, 3 * (i % 2)) for i in range(10)]
    with RoutingStore(path) as store:
        for run in ("spec", "plain"):
            new_run(store, run)
            batch = batch_of(seqs)
            if run == "spec":
                spec = rng.integers(-1, 8, (batch.num_tokens, len(LAYERS), 2, 4)).astype(np.int16)
                batch = dataclasses.replace(batch, speculative=spec)
            meta = [{"seq_id": i, "label": "ab"[i % 2]} for i in range(10)]
            store.write_batch(run, meta, batch)
            store.finish_run(run)
    return path


def invoke(*args: str) -> dict:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


def frame(rows: list[dict], like: pl.DataFrame) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=like.schema)


def test_analyze_prefetch_json_plot_and_memo(db, tmp_path):
    html = tmp_path / "recall.html"
    args = ["analyze", "prefetch", "spec", "--db", db, "--widths", "2,4", "--json"]
    out = invoke(*args, "--plot", str(html))
    assert html.is_file() and "plotly" in html.read_text()[:5000].lower()
    with RoutingStore(db, read_only=True) as store:
        want = pf.prefetch_recall(store.source("spec"), widths=[2, 4])
        kinds = [r[0] for r in store.con.execute("SELECT kind FROM analysis_results").fetchall()]
    assert frame(out["rows"], want).equals(want)
    assert "routescope.analysis.prefetch.prefetch_recall" in kinds
    names = {r["predictor"] for r in out["rows"]}
    assert names == {
        "speculative-1",
        "speculative-2",
        "previous-token",
        "window-8",
        "transition-1",
        "transition-2",
        "oracle",
    }
    # served from the memo the second time: same rows
    assert invoke(*args)["rows"] == out["rows"]
    # tables
    res = CliRunner().invoke(app, ["analyze", "prefetch", "spec", "--db", db, "-q"])
    assert res.exit_code == 0 and "recall@4" in res.output and "coverage" in res.output


def test_simulate_offload_json_plot_and_costs(db, tmp_path):
    html = tmp_path / "offload.html"
    out = invoke(
        "simulate", "offload", "spec", "--db", db, "--json", "--expert-mb", "2",
        "--layer-ms", "0.5", "--bandwidth-gbps", "10", "--capacities", "2,4,8",
        "--predictors", "previous-token,speculative-1,oracle", "--plot", str(html),
    )  # fmt: skip
    assert html.is_file()
    assert out["cost"]["expert_bytes"] == 2_000_000 and out["cost"]["load_ms"] == 0.2
    cost = ol.OffloadCost(**{k: v for k, v in out["cost"].items() if k != "load_ms"})
    with RoutingStore(db, read_only=True) as store:
        want = ol.offload_whatif(
            store.source("spec"),
            cost,
            predictors=["previous-token", "speculative-1", "oracle"],
            capacities=[2, 4, 8],
        )
    assert frame(out["rows"], want).equals(want)
    assert {r["policy"] for r in out["rows"]} == {
        "lru",
        "lfu",
        "belady",
        "all-resident",
        "no-cache",
    }
    res = CliRunner().invoke(
        app,
        ["simulate", "offload", "plain", "--db", db, "--expert-mb", "1", "--layer-ms", "0.1", "-q"],
    )
    assert res.exit_code == 0 and "Tokens/s" in res.output and "limits" in res.output


def one_line_error(monkeypatch, capsys, *args: str) -> str:
    import routescope.cli as cli

    monkeypatch.setattr(sys, "argv", ["routescope", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_user_errors_are_one_line(db, monkeypatch, capsys):
    line = one_line_error(
        monkeypatch,
        capsys,
        "analyze",
        "prefetch",
        "plain",
        "--db",
        db,
        "--predictors",
        "speculative",
    )
    assert "routescope collect … --speculative D" in line
    line = one_line_error(monkeypatch, capsys, "simulate", "offload", "plain", "--db", db)
    assert "--expert-mb and --layer-ms" in line  # tiny/olmoe's config is nowhere here
    line = one_line_error(
        monkeypatch, capsys, "simulate", "offload", "plain", "--db", db, "--policies", "static",
        "--expert-mb", "1", "--layer-ms", "1",
    )  # fmt: skip
    assert "not simulated" in line
    line = one_line_error(
        monkeypatch, capsys, "analyze", "prefetch", "plain", "--db", db, "--train-split", "1"
    )
    assert "strictly between 0 and 1" in line


def test_model_config_lookup(tmp_path, monkeypatch):
    from routescope.models.costs import model_config

    assert model_config("routescope/demo")["model_type"] == "olmoe"
    assert model_config("no/such-model") is None
    # a Hugging Face cache snapshot is found without any download
    snap = tmp_path / "hub" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text('{"hidden_size": 8}')
    (tmp_path / "hub" / "models--org--m" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--m" / "refs" / "main").write_text("abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_config("org/m") == {"hidden_size": 8}
    d = tmp_path / "local"
    d.mkdir()
    (d / "config.json").write_text('{"hidden_size": 4}')
    assert model_config(str(d)) == {"hidden_size": 4}


def test_run_cost_lives_below_the_cli_and_without_torch():
    """The dashboard and the CLI share `routescope.models.costs.run_cost`; importing it loads
    neither torch nor the CLI."""
    import subprocess

    code = (
        "import sys; from routescope.models.costs import run_cost; "
        "c = run_cost({'model_id': 'routescope/demo', 'moe_layers': [0, 1], 'top_k': 4, "
        "'num_experts': 32}); assert c.expert_bytes > 0; "
        "print(sorted(m for m in ('torch', 'routescope.cli') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
