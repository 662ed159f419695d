"""`routescope steer` and `routescope presets`: results equal the library's, errors are one line."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from test_steering_eval import SPEC, TEXTS, build_lm

from routescope.cli import main

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
from routescope.models import load_model
from routescope.steering.evaluate import EvalSet, loglik_change, random_baseline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):  # noqa: ANN001
    lm = build_lm()
    path = tmp_path_factory.mktemp("tiny")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:  # noqa: ANN001
    monkeypatch.setattr(sys, "argv", ["routescope", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def files(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(SPEC.to_json())
    ev = tmp_path / "eval.jsonl"
    labels = ["x", "y", "x", "y", "x"]
    ev.write_text(
        "\n".join(json.dumps({"text": t, "label": la}) for t, la in zip(TEXTS, labels, strict=True))
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[[edits]]\nlayer = 0\nexpert = 12\naction = "deactivate"\n')
    return spec, ev, bad, labels


def test_steer_eval_json_equals_library(monkeypatch, capsys, model_dir, files, tmp_path) -> None:
    spec, ev, _, labels = files
    code, out, err = cli(
        monkeypatch, capsys, "steer", "--spec", str(spec), "--model", str(model_dir),
        "--eval", str(ev), "--random-baseline", "3", "--seed", "4", "--json", "--batch-size", "2",
    )  # fmt: skip
    assert code == 0, err
    got = json.loads(out)
    ref_lm = load_model(str(model_dir))
    es = EvalSet.build(ref_lm, TEXTS, labels=labels)
    ref = loglik_change(ref_lm, SPEC, es)
    rb = random_baseline(ref_lm, SPEC, es, draws=3, seed=4)
    assert got["texts"] == 5
    assert got["overall"]["change"] == pytest.approx(ref.mean_change, abs=1e-6)
    by = {r["label"]: r["change"] for r in got["by_label"]}
    assert by["x"] == pytest.approx(
        float(np.mean(ref.per_text["change"].to_numpy()[[0, 2, 4]])), abs=1e-6
    )
    assert got["random_baseline"]["all"]["mean"] == pytest.approx(rb.mean, abs=1e-6)
    assert got["random_baseline"]["all"]["draws"] == 3
    assert got["random_baseline"]["y"]["max"] == pytest.approx(rb.summary("y")["max"], abs=1e-6)
    # table output runs too and names the baseline
    code, out, _ = cli(
        monkeypatch, capsys, "steer", "--spec", str(spec), "--model", str(model_dir),
        "--eval", str(ev), "--random-baseline", "2", "--quiet",
    )  # fmt: skip
    assert code == 0 and "random baseline: 2 draws" in out


def test_presets_cycle_and_steer_by_preset(monkeypatch, capsys, model_dir, files, tmp_path) -> None:
    spec, _, bad, _ = files
    db = str(tmp_path / "p.duckdb")
    code, out, err = cli(
        monkeypatch, capsys, "presets", "create", "mine", "--spec", str(spec),
        "--model", str(model_dir), "--db", db,
    )  # fmt: skip
    assert code == 0, err
    assert "created preset mine" in out
    code, _, err = cli(
        monkeypatch, capsys, "presets", "create", "mine", "--spec", str(spec), "--db", db
    )
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    code, _, err = cli(
        monkeypatch, capsys, "presets", "create", "bad", "--spec", str(bad),
        "--model", str(model_dir), "--db", db,
    )  # fmt: skip
    assert code == 2 and "edit 0 (layer 0, expert 12, deactivate)" in err and err.count("\n") == 1
    code, out, _ = cli(monkeypatch, capsys, "presets", "list", "--json", "--db", db)
    assert [p["name"] for p in json.loads(out)] == ["mine"]
    code, out, _ = cli(monkeypatch, capsys, "presets", "show", "mine", "--db", db)
    assert json.loads(out)["spec"]["edits"] == SPEC.to_dict()["edits"]
    code, out, err = cli(
        monkeypatch, capsys, "steer", "--preset", "mine", "--model", str(model_dir),
        "--prompt", "the cat", "--max-new-tokens", "4", "--json", "--db", db,
    )  # fmt: skip
    assert code == 0, err
    got = json.loads(out)
    assert got["source"] == "preset mine"
    assert sorted({t["which"] for t in got["tokens"]}) == ["base", "steered"]
    assert len([t for t in got["tokens"] if t["which"] == "base"]) == 4
    code, out, _ = cli(monkeypatch, capsys, "presets", "delete", "mine", "--db", db)
    assert code == 0 and "deleted preset mine" in out
    code, _, err = cli(monkeypatch, capsys, "presets", "show", "mine", "--db", db)
    assert code == 2 and "no steering preset named 'mine'" in err


def test_steer_errors_are_one_line(monkeypatch, capsys, model_dir, files) -> None:
    spec, ev, bad, _ = files
    cases = [
        (["--spec", str(spec), "--prompt", "a", "--eval", str(ev)], "exactly one of --prompt"),
        (["--prompt", "a"], "exactly one of --spec FILE or --preset NAME"),
        (["--spec", str(bad), "--prompt", "a"], "expert 12 is out of range 0..7"),
        (["--spec", str(spec) + ".missing.json", "--prompt", "a"], "not found"),
    ]
    for args, needle in cases:
        code, _, err = cli(monkeypatch, capsys, "steer", "--model", str(model_dir), *args)
        assert code == 2, err
        assert needle in err and err.count("\n") == 1
