"""One adapter per MoE architecture family: module names and routing functions live only here.

Each family is one module of this package whose adapter class registers itself with
``@register_adapter`` (see ``registry`` for the table and a copy-paste example, README.md for the
contract and the steps to add a family).
"""

from typing import Any

from routescope.models.adapters.base import (
    GroupLimitedAdapter,
    MoEAdapter,
    SoftmaxTopKAdapter,
    TopKLogitsAdapter,
    TopKSoftmaxAdapter,
    remove_experts,
)
from routescope.models.adapters.registry import (
    AdapterEntry,
    AdapterRegistrationError,
    adapter_class,
    adapter_for,
    register_adapter,
    registered_adapters,
    supported_families,
    unregister_adapter,
)

__all__ = [
    "ADAPTERS",
    "SUPPORTED_FAMILIES",
    "AdapterEntry",
    "AdapterRegistrationError",
    "GroupLimitedAdapter",
    "MoEAdapter",
    "SoftmaxTopKAdapter",
    "TopKLogitsAdapter",
    "TopKSoftmaxAdapter",
    "adapter_class",
    "adapter_for",
    "register_adapter",
    "registered_adapters",
    "remove_experts",
    "supported_families",
    "unregister_adapter",
]


def __getattr__(name: str) -> Any:
    """``SUPPORTED_FAMILIES`` and ``ADAPTERS``, read from the registry when asked (so families
    registered after import are included)."""
    if name in ("SUPPORTED_FAMILIES", "ADAPTERS"):
        from routescope.models.adapters import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
