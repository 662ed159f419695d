"""routescope.models: loading MoE models and the per-family adapters."""

from routescope.models.adapters import SUPPORTED_FAMILIES, MoEAdapter, adapter_for
from routescope.models.loading import LoadedModel, ModelLoadError, load_model

__all__ = [
    "SUPPORTED_FAMILIES",
    "LoadedModel",
    "MoEAdapter",
    "ModelLoadError",
    "adapter_for",
    "load_model",
]
