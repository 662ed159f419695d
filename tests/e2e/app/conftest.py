"""Fixtures for the dashboard tests: a routing store collected with the real pipeline.

The store is collected once per session by `routescope.collect.runner.run_job` with the real
nnsight engine, from the shipped demo model when its files are present, otherwise from a tiny
random OLMoE with a word-level tokenizer built here. Prompts carry two labels and target spans,
and a few tokens are generated, so every page (labels, target/rest, prefill/decode) has data.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parents[3] / "app"
MAIN = APP_DIR / "main.py"
if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))  # the tests import the app's page table, `pages`

PROSE = [
    "the cat sat on the mat",
    "a big dog ran under the red rug",
    "the small blue cat sat on a green mat",
    "der cat ist ein dog und die mat",
    "one two three four five",
]
CODE = [
    "def f ( x ) : return x + 1",
    "if x = 0 : print ( y ) else : print ( z )",
    "for x in y : print ( x * 2 )",
    "x = y - z",
    "return 3",
]


def _tiny_lm(root: Path):
    """A tiny random OLMoE (3 layers, 8 experts, top-2) and a tokenizer whose ids fit it, saved
    under root/tiny-olmoe so the app can load it by path (the Steering playground does)."""
    from tiny_models import build_tiny_olmoe, make_tokenizer

    from routescope.models import LoadedModel

    model, tok = build_tiny_olmoe(seed=0), make_tokenizer()
    path = root / "tiny-olmoe"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return LoadedModel.from_model(model, tokenizer=tok, model_id=str(path))


def _demo_lm():
    """The shipped demo model, when its files exist in this checkout (else None)."""
    try:
        from routescope.models.demo import DEMO_MODEL_PATH
    except ImportError:
        return None
    if not (Path(DEMO_MODEL_PATH) / "config.json").is_file():
        return None
    from routescope.models import load_model

    return load_model(str(DEMO_MODEL_PATH), dtype="float32")


def _write_prompts(root: Path) -> list[str]:
    prose = root / "prose.jsonl"
    prose.write_text(
        "\n".join(json.dumps({"text": t, "label": "prose"}) for t in PROSE) + "\n",
        encoding="utf-8",
    )
    code = root / "code.jsonl"
    code.write_text(
        "\n".join(json.dumps({"text": t, "label": "code", "target": t.split()[0]}) for t in CODE)
        + "\n",
        encoding="utf-8",
    )
    return [str(prose), str(code)]


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory) -> dict:
    """{'db', 'run_id', 'model_id', 'num_experts', 'top_k', 'layers', 'labels'} of a store
    collected with the real runner and engine (demo model if shipped, else tiny OLMoE)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch

    from routescope.collect.jobs import job_from_options
    from routescope.collect.runner import run_job
    from routescope.store.store import RoutingStore

    torch.set_num_threads(1)
    root: Path = tmp_path_factory.mktemp("app_store")
    lm = _demo_lm() or _tiny_lm(root)
    db = str(root / "fixture.duckdb")
    job = job_from_options(
        _write_prompts(root),
        db=db,
        batch_size=4,
        max_new_tokens=3,
        max_length=64,
        name="fixture",
        model=lm.model_id,
    )
    result = run_job(job, quiet=True, lm=lm)
    assert result.status == "complete"
    with RoutingStore(db, read_only=True) as store:
        info = store.run_info(result.run_id)
    return {
        "db": db,
        "run_id": result.run_id,
        "model_id": info["model_id"],
        "num_experts": int(info["num_experts"]),
        "top_k": int(info["top_k"]),
        "layers": [int(x) for x in info["moe_layers"]],
        "labels": info["labels"],
        "tokens": info["tokens"],
    }


@pytest.fixture
def store_copy(fixture_store, tmp_path) -> dict:
    """A private copy of the fixture store, for tests that write (notes, presets)."""
    db = tmp_path / "copy.duckdb"
    shutil.copy(fixture_store["db"], db)
    return {**fixture_store, "db": str(db)}
