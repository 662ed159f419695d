"""End-to-end tests on the shipped demo model: offline, quiet, and gentle on a shared CPU."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_model():
    """The shipped demo model and tokenizer, loaded offline from the package directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from routescope.models.demo import DEMO_MODEL_PATH

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL_PATH)
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_PATH)
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def demo_heldout_db(tmp_path_factory):
    """`routescope demo --split heldout` run once: (database path, the command's output)."""
    from typer.testing import CliRunner

    from routescope.cli._app import app

    db = tmp_path_factory.mktemp("demo") / "demo.duckdb"
    res = CliRunner().invoke(app, ["demo", "--db", str(db), "--split", "heldout", "--quiet"])
    assert res.exit_code == 0, (res.output, repr(res.exception))
    return db, res.output
