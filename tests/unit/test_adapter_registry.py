"""The adapter registry: families register by decorator, out-of-tree ones need no edit to routescope,
lookups and bad registrations fail in one line, and the README lists what is registered."""

from __future__ import annotations

import pkgutil
import re
import sys
import textwrap
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import routescope.models.adapters as adapters_pkg
from routescope.collect.engine import collect_batch
from routescope.core.errors import UnsupportedModelError
from routescope.models import LoadedModel
from routescope.models.adapters import (
    AdapterRegistrationError,
    MoEAdapter,
    SoftmaxTopKAdapter,
    adapter_class,
    adapter_for,
    register_adapter,
    registered_adapters,
    supported_families,
    unregister_adapter,
)
from routescope.models.adapters import registry as reg

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made in a test are undone after it (the tables are copied back)."""
    reg.registered_adapters()  # built-ins in place before the copy
    monkeypatch.setattr(reg, "_ENTRIES", dict(reg._ENTRIES))
    monkeypatch.setattr(reg, "_BY_MODEL_TYPE", dict(reg._BY_MODEL_TYPE))
    yield


# ---- the built-in table --------------------------------------------------------------------


def test_every_adapter_module_registers_its_families() -> None:
    """Each module of the package (but base and registry) registers at least one family, and each
    built-in entry comes from such a module: the package scan is the whole list."""
    modules = {
        info.name
        for info in pkgutil.iter_modules(adapters_pkg.__path__)
        if info.name not in ("base", "registry")
    }
    entries = registered_adapters()
    by_module: dict[str, list[str]] = {}
    for entry in entries:
        assert entry.builtin, entry.origin
        by_module.setdefault(entry.adapter.__module__.rsplit(".", 1)[1], []).append(entry.family)
    assert set(by_module) == modules
    assert len(entries) >= 14
    for entry in entries:
        cls = entry.adapter
        assert cls.family == entry.family
        assert entry.family in entry.model_types
        assert adapter_class(entry.family) is cls
        assert entry.label and entry.routing and cls.weights_doc, entry.family


def test_supported_families_are_read_from_the_table() -> None:
    from routescope import models
    from routescope.models import adapters

    families = tuple(e.family for e in registered_adapters())
    assert supported_families() == families == tuple(sorted(families))
    assert families == adapters.SUPPORTED_FAMILIES
    assert families == models.SUPPORTED_FAMILIES
    assert set(adapters.ADAPTERS) == set(families)


def test_readme_lists_every_registered_family() -> None:
    """README's "Supported model families" names each built-in family by its label."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Supported model families", 1)[1].split("\n## ", 1)[0]
    prose = " ".join(section.split())
    missing = [e.label for e in registered_adapters() if e.builtin and e.label not in prose]
    assert not missing, f"README's Supported model families does not name {missing}"


def test_adapters_readme_starter_table_names_real_adapters() -> None:
    """The contributor guide's starter table points at modules and classes that exist."""
    guide = (ROOT / "routescope/models/adapters/README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(\w+)\.py`", guide))
    assert {"olmoe", "gpt_oss", "deepseek_v3", "llama4"} <= named
    for module in named:
        assert (ROOT / "routescope/models/adapters" / f"{module}.py").is_file(), module
    assert "tests/integration/test_families.py" in guide
    assert "tests/unit/test_adapter_registry.py" in guide


def test_registry_docstring_example_registers(scratch_registry) -> None:
    """The copy-paste example in the registry's docstring runs and registers its family."""
    doc = reg.__doc__ or ""
    example = doc.split("Registering a family", 1)[1].split("::\n", 1)[1]
    example = example.split("    from routescope.models import load_model", 1)[0]
    exec(compile(textwrap.dedent(example), "registry-example", "exec"), {"__name__": "example"})
    assert adapter_class("my_moe").__name__ == "MyMoeAdapter"
    assert next(e for e in registered_adapters() if e.family == "my_moe").label == "MyMoE"


# ---- lookups -------------------------------------------------------------------------------


def test_unknown_model_type_names_every_family_and_how_to_add_one() -> None:
    with pytest.raises(UnsupportedModelError) as err:
        adapter_class("llama")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'llama'" in msg
    for family in supported_families():
        assert family in msg
    assert "@register_adapter(" in msg and "routescope/models/adapters/README.md" in msg


# ---- an out-of-tree family -----------------------------------------------------------------

VOCAB = 96


def _tiny_minimax() -> nn.Module:
    """A tiny MiniMax (transformers has it; routescope ships no adapter for it)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "minimax",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        num_local_experts=6,
        num_experts_per_tok=2,
        block_size=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.weight.normal_(0.0, 1.0)
    return model


def test_out_of_tree_family_registers_without_editing_routescope(scratch_registry) -> None:
    """A family defined here (as a user's package would) serves models, collection included."""
    assert "minimax" not in supported_families()  # if routescope adds it, pick another family

    @register_adapter("minimax", label="MiniMax")
    class MiniMaxAdapter(SoftmaxTopKAdapter):
        """MiniMax text: Mixtral's routing (softmax over E, top-k, always renormalized)."""

        router_attr = "mlp.gate"
        experts_attr = "num_local_experts"

        @property
        def norm_topk_prob(self) -> bool:
            return True

    assert "minimax" in supported_families()
    assert MiniMaxAdapter.family == "minimax"
    model = _tiny_minimax()
    lm = LoadedModel.from_model(model)
    assert isinstance(lm.adapter, MiniMaxAdapter)
    assert (lm.moe_layers, lm.num_experts, lm.top_k) == ([0, 1], 6, 2)
    assert lm.shape.moe_layers == (0, 1)

    captured: dict[int, tuple[torch.Tensor, ...]] = {}
    handles = [
        layer.mlp.gate.register_forward_hook(
            lambda mod, args, out, i=i: captured.__setitem__(i, out)
        )
        for i, layer in enumerate(model.model.layers)
    ]
    seq = [1, 17, 33, 5, 60, 71, 8]
    try:
        with torch.no_grad():
            model(torch.tensor([seq]))
    finally:
        for h in handles:
            h.remove()
    rec = collect_batch(lm, [seq])
    for j in (0, 1):
        logits, weights, indices = captured[j]
        order = torch.argsort(logits.gather(1, indices), dim=1, descending=True)
        np.testing.assert_array_equal(rec.experts[:, j], indices.gather(1, order).numpy())
        np.testing.assert_allclose(rec.weights[:, j], weights.gather(1, order).numpy(), rtol=1e-5)
        w, i = lm.adapter.route(logits, lm.router_modules()[j])  # route() is the router's choice
        np.testing.assert_array_equal(i.numpy(), rec.experts[:, j])
        np.testing.assert_allclose(w.numpy(), rec.weights[:, j], rtol=1e-5)

    unregister_adapter("minimax")
    with pytest.raises(UnsupportedModelError, match="'minimax' has no routescope adapter"):
        adapter_for(model.config)


def test_several_model_types_one_family(scratch_registry) -> None:
    from transformers import AutoConfig

    @register_adapter("olmoe_like", model_types=("olmoe_like", "olmoe_like_text"))
    class OlmoeLike(SoftmaxTopKAdapter):
        router_attr = "mlp.gate"
        experts_attr = "num_experts"

    assert adapter_class("olmoe_like_text") is OlmoeLike
    cfg = AutoConfig.for_model("olmoe", num_experts=4, num_experts_per_tok=2)
    cfg.model_type = "olmoe_like_text"
    assert adapter_for(cfg).family == "olmoe_like"
    assert next(e for e in registered_adapters() if e.family == "olmoe_like").label == "olmoe_like"


# ---- registrations that cannot work fail at import, in one line -----------------------------


def _define(family: str, base: type = SoftmaxTopKAdapter, **attrs: object) -> type:
    """Register a class built from ``base`` and ``attrs`` under ``family``."""
    body = dict(attrs)
    model_types = body.pop("model_types", None)
    return register_adapter(family, model_types=model_types)(
        type(f"Adapter_{family}", (base,), body)
    )


@pytest.mark.parametrize(
    ("family", "base", "attrs", "match"),
    [
        (
            "no_routing",
            MoEAdapter,
            {"router_attr": "mlp.gate", "experts_attr": "num_experts"},
            "does not implement gate_weights, selection_scores",
        ),
        ("no_router", SoftmaxTopKAdapter, {"experts_attr": "num_experts"}, "has no router_attr"),
        ("no_experts", SoftmaxTopKAdapter, {"router_attr": "mlp.gate"}, "has no experts_attr"),
        (
            "olmoe",
            SoftmaxTopKAdapter,
            {"router_attr": "mlp.gate", "experts_attr": "num_experts"},
            "family 'olmoe' is already served by routescope.models.adapters.olmoe:OlmoeAdapter",
        ),
        (
            "mixtral_fork",
            SoftmaxTopKAdapter,
            {"router_attr": "mlp.gate", "experts_attr": "n", "model_types": ("mixtral",)},
            "model type 'mixtral' is already served by family 'mixtral'",
        ),
    ],
)
def test_bad_registrations_fail_in_one_line(
    scratch_registry, family: str, base: type, attrs: dict, match: str
) -> None:
    before = registered_adapters()
    with pytest.raises(AdapterRegistrationError, match=match) as err:
        _define(family, base, **attrs)
    assert "\n" not in str(err.value)
    assert registered_adapters() == before  # nothing half-registered
    assert adapter_class("olmoe").__name__ == "OlmoeAdapter"


def test_registering_a_non_adapter_or_no_name_fails() -> None:
    with pytest.raises(AdapterRegistrationError, match="not a subclass of MoEAdapter"):
        register_adapter("plain")(dict)
    with pytest.raises(AdapterRegistrationError, match="non-empty string"):
        register_adapter("")
    with pytest.raises(AdapterRegistrationError, match="model_types must be non-empty strings"):
        register_adapter("x", model_types=())


def test_reregistering_the_same_class_replaces_it(scratch_registry) -> None:
    """Re-running a module (a notebook cell, importlib.reload) registers the same class again."""
    source = textwrap.dedent(
        """
        from routescope.models.adapters import SoftmaxTopKAdapter, register_adapter

        @register_adapter("reloaded_moe", model_types=("reloaded_moe", "reloaded_text"))
        class ReloadedAdapter(SoftmaxTopKAdapter):
            router_attr = "mlp.gate"
            experts_attr = "num_experts"
        """
    )
    namespace: dict = {"__name__": "user_code"}
    exec(compile(source, "user_code.py", "exec"), namespace)
    first = adapter_class("reloaded_text")
    namespace = {"__name__": "user_code"}
    exec(compile(source, "user_code.py", "exec"), namespace)
    second = adapter_class("reloaded_text")
    assert first is not second and second is namespace["ReloadedAdapter"]
    assert supported_families().count("reloaded_moe") == 1


# ---- plugins through the routescope.adapters entry-point group -------------------------------


def test_entry_point_plugins_register_and_a_broken_one_only_warns(
    scratch_registry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "rs_plugin_ok.py").write_text(
        textwrap.dedent(
            """
            from routescope.models.adapters import TopKSoftmaxAdapter, register_adapter

            @register_adapter("plugin_moe", label="PluginMoE")
            class PluginAdapter(TopKSoftmaxAdapter):
                router_attr = "mlp.router"
                experts_attr = "num_local_experts"
            """
        )
    )
    (tmp_path / "rs_plugin_broken.py").write_text("raise ImportError('missing dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        metadata.EntryPoint("broken", "rs_plugin_broken", reg.ENTRY_POINT_GROUP),
        metadata.EntryPoint("ok", "rs_plugin_ok", reg.ENTRY_POINT_GROUP),
    ]
    asked: list[str] = []

    def fake_entry_points(group: str):  # noqa: ANN202
        asked.append(group)
        return points

    monkeypatch.setattr(reg.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(reg, "_loaded", False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            families = supported_families()
    finally:
        for name in ("rs_plugin_ok", "rs_plugin_broken"):
            sys.modules.pop(name, None)
    assert asked == ["routescope.adapters"]
    assert "plugin_moe" in families and "olmoe" in families
    entry = next(e for e in registered_adapters() if e.family == "plugin_moe")
    assert not entry.builtin and entry.origin == "rs_plugin_ok:PluginAdapter"
    texts = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(texts) == 1 and "'broken' (rs_plugin_broken)" in texts[0]
    assert "missing dependency" in texts[0]


def test_families_command_lists_the_registry():
    """`routescope families --json` is the registry's table (family, model types, routing)."""
    import json

    from typer.testing import CliRunner

    from routescope.cli import app
    from routescope.models.adapters.registry import registered_adapters

    res = CliRunner().invoke(app, ["families", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["family"] for r in rows] == [e.family for e in registered_adapters()]
    assert all(r["model_types"] and r["routing"] for r in rows)
    assert "olmoe" in {t for r in rows for t in r["model_types"]}
