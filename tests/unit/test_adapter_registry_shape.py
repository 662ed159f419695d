"""What the models layer answers once for everybody: a model's shape (from a loaded model, a config
alone, or a stored run), its pad id, and the dtype list."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoConfig

from routescope.core.errors import UnsupportedModelError
from routescope.core.shape import ModelShape
from routescope.models import LoadedModel, ModelLoadError, config_shape
from routescope.models.adapters import adapter_for

TINY_DEEPSEEK_V3 = {
    "vocab_size": 96,
    "hidden_size": 32,
    "intermediate_size": 64,
    "moe_intermediate_size": 16,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "first_k_dense_replace": 2,
    "n_group": 4,
    "topk_group": 2,
    "kv_lora_rank": 16,
    "q_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
}
EXPECTED = ModelShape(moe_layers=(2, 3), num_experts=8, top_k=2)


def _config(**overrides: object) -> object:
    return AutoConfig.for_model("deepseek_v3", **{**TINY_DEEPSEEK_V3, **overrides})


def test_shape_from_an_adapter_a_loaded_model_and_a_run() -> None:
    adapter = adapter_for(_config())
    assert adapter.shape == EXPECTED
    lm = SimpleNamespace(adapter=adapter)
    assert LoadedModel.shape.fget(lm) == EXPECTED  # type: ignore[attr-defined]
    info = {"moe_layers": [2, 3], "num_experts": 8, "top_k": 2, "family": "deepseek_v3"}
    assert ModelShape.from_run_info(info) == EXPECTED
    assert ModelShape.from_run_info({**info, "moe_layers": ("2", 3)}) == EXPECTED


def test_config_shape_reads_the_config_alone(tmp_path: Path) -> None:
    """No weights are needed: the directory holds config.json and nothing else."""
    _config().save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    assert config_shape(str(tmp_path)) == EXPECTED
    with pytest.raises(ModelLoadError):  # loading would need the weights
        from routescope.models import load_model

        load_model(str(tmp_path))


def test_config_shape_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        config_shape(str(tmp_path / "missing" / "model"))
    (tmp_path / "dense").mkdir()
    AutoConfig.for_model("llama", num_hidden_layers=1).save_pretrained(tmp_path / "dense")
    with pytest.raises(UnsupportedModelError, match="'llama' has no routescope adapter") as err:
        config_shape(str(tmp_path / "dense"))
    assert "\n" not in str(err.value)
    (tmp_path / "all_dense").mkdir()
    _config(first_k_dense_replace=4).save_pretrained(tmp_path / "all_dense")
    with pytest.raises(UnsupportedModelError, match="no MoE layers"):
        config_shape(str(tmp_path / "all_dense"))


def test_config_shape_of_the_demo_model() -> None:
    from routescope.models.demo import DEMO_MODEL_PATH

    cfg = json.loads((DEMO_MODEL_PATH / "config.json").read_text())
    shape = config_shape("demo")
    assert shape.num_experts == cfg["num_experts"] and shape.top_k == cfg["num_experts_per_tok"]
    assert shape.moe_layers == tuple(range(cfg["num_hidden_layers"]))


@pytest.mark.parametrize(
    ("config_pad", "tokenizer_pad", "eos", "expected"),
    [
        (5, 7, 2, 5),  # the config's pad token first
        (None, 7, 2, 7),  # then the tokenizer's
        (None, None, [3, 4], 3),  # then EOS (the first of several)
        (None, None, None, 0),  # else 0
        (None, None, [], 0),
    ],
)
def test_pad_token_id_fallbacks(
    config_pad: int | None, tokenizer_pad: int | None, eos: object, expected: int
) -> None:
    config = SimpleNamespace(pad_token_id=config_pad, eos_token_id=eos)
    lm = SimpleNamespace(
        model=SimpleNamespace(config=config),
        tokenizer=None if tokenizer_pad is None else SimpleNamespace(pad_token_id=tokenizer_pad),
    )
    assert LoadedModel.pad_token_id.fget(lm) == expected  # type: ignore[attr-defined]


def test_one_dtype_list_and_no_torch_for_it() -> None:
    from routescope.collect import jobs
    from routescope.models.dtypes import DTYPES

    assert jobs.DTYPES is DTYPES
    code = (
        "import sys, routescope.models.dtypes, routescope.models.demo, routescope.collect.jobs, "
        "routescope.core.shape; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
