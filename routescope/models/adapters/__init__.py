"""One adapter per MoE architecture family: module names and routing functions live only here."""

from routescope.models.adapters.base import MoEAdapter
from routescope.models.adapters.registry import ADAPTERS, SUPPORTED_FAMILIES, adapter_for

__all__ = ["ADAPTERS", "SUPPORTED_FAMILIES", "MoEAdapter", "adapter_for"]
