"""routescope.models: loading MoE models and the per-family adapters.

Names are imported on first use, so that light submodules (``dtypes``, ``demo``, ``costs``: a
run's model config and offloading costs) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from routescope.models.adapters import (
        MoEAdapter,
        adapter_for,
        register_adapter,
        registered_adapters,
        supported_families,
    )
    from routescope.models.dtypes import DTYPES
    from routescope.models.loading import LoadedModel, ModelLoadError, config_shape, load_model

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "DTYPES": "routescope.models.dtypes",
    "SUPPORTED_FAMILIES": "routescope.models.adapters",
    "MoEAdapter": "routescope.models.adapters",
    "adapter_for": "routescope.models.adapters",
    "register_adapter": "routescope.models.adapters",
    "registered_adapters": "routescope.models.adapters",
    "supported_families": "routescope.models.adapters",
    "LoadedModel": "routescope.models.loading",
    "ModelLoadError": "routescope.models.loading",
    "config_shape": "routescope.models.loading",
    "load_model": "routescope.models.loading",
}

__all__ = [
    "DTYPES",
    "SUPPORTED_FAMILIES",
    "LoadedModel",
    "ModelLoadError",
    "MoEAdapter",
    "adapter_for",
    "config_shape",
    "load_model",
    "register_adapter",
    "registered_adapters",
    "supported_families",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
