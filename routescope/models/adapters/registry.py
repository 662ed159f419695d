"""Which adapter serves which transformers ``model_type``; the one place new families are added."""

from __future__ import annotations

from typing import Any

from routescope.core.errors import UnsupportedModelError
from routescope.models.adapters.base import MoEAdapter
from routescope.models.adapters.deepseek_v2 import DeepseekV2Adapter
from routescope.models.adapters.deepseek_v3 import DeepseekV3Adapter
from routescope.models.adapters.flex_olmo import FlexOlmoAdapter
from routescope.models.adapters.glm4_moe import Glm4MoeAdapter
from routescope.models.adapters.gpt_oss import GptOssAdapter
from routescope.models.adapters.granitemoe import GraniteMoeAdapter
from routescope.models.adapters.granitemoeshared import GraniteMoeSharedAdapter
from routescope.models.adapters.jamba import JambaAdapter
from routescope.models.adapters.llama4 import Llama4Adapter
from routescope.models.adapters.mixtral import MixtralAdapter
from routescope.models.adapters.olmoe import OlmoeAdapter
from routescope.models.adapters.phimoe import PhimoeAdapter
from routescope.models.adapters.qwen2_moe import Qwen2MoeAdapter
from routescope.models.adapters.qwen3_moe import Qwen3MoeAdapter

ADAPTERS: dict[str, type[MoEAdapter]] = {
    cls.family: cls
    for cls in (
        OlmoeAdapter,
        MixtralAdapter,
        Qwen2MoeAdapter,
        Qwen3MoeAdapter,
        DeepseekV2Adapter,
        DeepseekV3Adapter,
        GptOssAdapter,
        GraniteMoeAdapter,
        PhimoeAdapter,
        Glm4MoeAdapter,
        GraniteMoeSharedAdapter,
        FlexOlmoAdapter,
        JambaAdapter,
        Llama4Adapter,
    )
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(ADAPTERS)

_HOW_TO_ADD = "add an adapter in routescope/models/adapters/ (one file + one tiny-config test)"


def adapter_for(config: Any) -> MoEAdapter:
    """The adapter for a transformers config; UnsupportedModelError for other or dense models."""
    model_type = getattr(config, "model_type", None)
    supported = ", ".join(SUPPORTED_FAMILIES)
    cls = ADAPTERS.get(str(model_type))
    if cls is None:
        raise UnsupportedModelError(
            f"model type {model_type!r} has no routescope adapter (supported: {supported}); "
            f"{_HOW_TO_ADD}"
        )
    adapter = cls(config)
    if not adapter.moe_layers:
        raise UnsupportedModelError(
            f"this {model_type} model has no MoE layers (dense configuration), nothing to record; "
            f"use an MoE checkpoint of a supported family ({supported})"
        )
    return adapter
