"""transformers version shims: the KV-cache keyword of a causal LM's forward and its output field.

transformers <= 5.23 takes the KV cache as ``forward(past_key_values=...)`` and returns it as the
output field ``past_key_values``. transformers 5.24 renamed both to ``cache``: the forward keeps
accepting ``past_key_values`` through ``@deprecate_kwarg("past_key_values", "5.40.0",
new_name="cache")`` but emits a FutureWarning on every such call, and outputs keep a
``past_key_values`` property that logs a deprecation warning. From 5.40 the old keyword is gone.

Both names are decided from the model itself, not from the version number: ``inspect.signature``
follows the ``__wrapped__`` chain that ``functools.wraps`` leaves on the decorated forward (the
decorated function's own signature is just ``(*args, **kwargs)``), and the output's dataclass fields
name the field the model filled.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["CACHE_NAMES", "cache_kwarg", "output_cache"]

#: the names a KV cache goes by, newest first
CACHE_NAMES: tuple[str, ...] = ("cache", "past_key_values")


def _installed_default() -> str:
    """The cache keyword of the installed transformers, for a forward whose signature hides it."""
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"


def cache_kwarg(model: Any) -> str:
    """The keyword ``model``'s forward takes its KV cache under: ``cache`` or ``past_key_values``.

    Read from the forward's signature (through decorators that use ``functools.wraps``), so
    passing it never triggers transformers' rename shim and its FutureWarning. A forward that
    names neither (only ``**kwargs``) gets the installed transformers' keyword.
    """
    forward = getattr(model, "forward", model)
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # builtins or objects without a retrievable signature
        params = {}
    for name in CACHE_NAMES:
        if name in params:
            return name
    return _installed_default()


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned: field ``cache`` (>= 5.24) or ``past_key_values`` (<= 5.23).

    Reads the declared field, never the backward-compatibility property, so no deprecation
    warning is logged. None when the output has the field but no cache in it.
    """
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        fields = {f.name for f in dataclasses.fields(output)}
        for name in CACHE_NAMES:
            if name in fields:
                return getattr(output, name)
    if isinstance(output, Mapping):
        for name in CACHE_NAMES:
            if name in output:
                return output[name]
    raise TypeError(
        f"{type(output).__name__} has no KV cache field (looked for {', '.join(CACHE_NAMES)}): "
        "routescope cannot decode with this model's outputs"
    )
