"""Which adapter serves which transformers ``model_type``: a table filled by ``@register_adapter``.

Each adapter class registers itself with a decorator, so the table is wherever the classes are.
Nothing else in routescope lists families: lookups, their errors, the CLI and the tests that keep
the README and the tiny-config tests in step all read this table.

Where the entries come from (loaded on the first lookup):
- every module of this package (``routescope/models/adapters/*.py``): a new built-in family is one
  new module here, with no list to edit;
- modules named by the ``routescope.adapters`` entry-point group of installed packages, so the CLI
  finds an out-of-tree adapter too;
- any module that imports routescope and applies the decorator (a notebook, a script).

Registering a family (copy, adjust, and read README.md in this folder for the steps and tests)::

    from routescope.models.adapters import SoftmaxTopKAdapter, register_adapter


    @register_adapter("my_moe", label="MyMoE")  # the config's model_type
    class MyMoeAdapter(SoftmaxTopKAdapter):
        # MyMoE: every layer MoE, router mlp.gate; softmax over E, top-k (the base's routing)
        router_attr = "mlp.gate"  # the router module inside one decoder layer
        experts_attr = "num_experts"  # the config attribute holding E


    from routescope.models import load_model

    lm = load_model("path/to/a/my_moe/checkpoint")  # lm.adapter is a MyMoeAdapter

Several ``model_type`` names for one family: ``@register_adapter("my_moe", model_types=("my_moe",
"my_moe_text"))``. An installed package that wants the CLI to see its adapter declares, in its
``pyproject.toml``::

    [project.entry-points."routescope.adapters"]
    my_moe = "my_package.my_moe_adapter"  # a module whose import registers the adapter

A lookup of an unknown ``model_type`` raises `UnsupportedModelError` naming every registered family
and how to add one; a faulty registration (abstract class, no router path, a name another class
already holds) raises `AdapterRegistrationError` at import time.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, TypeVar

from routescope.core.errors import RoutescopeError, UnsupportedModelError
from routescope.models.adapters.base import MoEAdapter

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOW_TO_ADD",
    "AdapterEntry",
    "AdapterRegistrationError",
    "adapter_class",
    "adapter_for",
    "register_adapter",
    "registered_adapters",
    "supported_families",
    "unregister_adapter",
]

#: entry-point group through which installed packages contribute adapter modules
ENTRY_POINT_GROUP = "routescope.adapters"

#: the second half of every "no adapter" error
HOW_TO_ADD = (
    "to add one, subclass an adapter from routescope.models.adapters and decorate it with "
    "@register_adapter('<model_type>') (guide: routescope/models/adapters/README.md)"
)

#: modules of this package that hold no family
_NOT_FAMILIES = frozenset({"base", "registry"})

A = TypeVar("A", bound=type[MoEAdapter])


class AdapterRegistrationError(RoutescopeError):
    """An adapter class cannot be registered (incomplete, or its name is taken)."""


@dataclass(frozen=True)
class AdapterEntry:
    """One registered family: its name, adapter class, the model types it serves and a label."""

    family: str
    adapter: type[MoEAdapter]
    model_types: tuple[str, ...]
    label: str

    @property
    def routing(self) -> str:
        """The routing function in a few words (``MoEAdapter.routing``)."""
        return self.adapter.routing

    @property
    def builtin(self) -> bool:
        """Whether the adapter ships with routescope (a module of this package)."""
        return self.adapter.__module__.startswith(f"{__package__}.")

    @property
    def origin(self) -> str:
        """Where the class is defined, ``module:QualName``."""
        return f"{self.adapter.__module__}:{self.adapter.__qualname__}"


_ENTRIES: dict[str, AdapterEntry] = {}  # family -> entry
_BY_MODEL_TYPE: dict[str, str] = {}  # model_type -> family
_loaded = False


def _same_class(a: type, b: type) -> bool:
    """The same class, or the same definition re-imported (a module reloaded in a notebook)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _check_complete(cls: type, family: str) -> None:
    where = f"adapter {cls.__qualname__} for {family!r}"
    if not (isinstance(cls, type) and issubclass(cls, MoEAdapter)):
        raise AdapterRegistrationError(f"{where} is not a subclass of MoEAdapter")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise AdapterRegistrationError(
            f"{where} does not implement {missing}: subclass a routing-style base "
            "(SoftmaxTopKAdapter, TopKSoftmaxAdapter) or an existing family's adapter"
        )
    router_attr = getattr(cls, "router_attr", None)
    if not isinstance(router_attr, str) or not router_attr:
        raise AdapterRegistrationError(
            f"{where} has no router_attr: set it to the router module's path inside a decoder "
            'layer, e.g. router_attr = "mlp.gate"'
        )
    if cls.num_experts is MoEAdapter.num_experts and not getattr(cls, "experts_attr", None):
        raise AdapterRegistrationError(
            f"{where} has no experts_attr: set it to the config attribute holding E, e.g. "
            'experts_attr = "num_experts" (or override num_experts)'
        )


def register_adapter(
    family: str, *, model_types: Iterable[str] | None = None, label: str | None = None
) -> Callable[[A], A]:
    """Class decorator: ``cls`` serves ``family`` (and every name in ``model_types``).

    ``family`` is the name runs record (``runs.family``); ``model_types`` are the config
    ``model_type`` values it serves (default: ``family`` alone); ``label`` is the human name the
    README and the CLI show (default: ``family``). Sets ``cls.family`` and returns ``cls``.
    Registering the same class again (a reloaded module) replaces the entry; a name held by
    another class is an `AdapterRegistrationError`.
    """
    if not isinstance(family, str) or not family:
        raise AdapterRegistrationError(f"a family name must be a non-empty string, got {family!r}")
    types = tuple(dict.fromkeys(model_types)) if model_types is not None else (family,)
    if not types or not all(isinstance(t, str) and t for t in types):
        raise AdapterRegistrationError(
            f"family {family!r}: model_types must be non-empty strings, got {model_types!r}"
        )

    def decorate(cls: A) -> A:
        _check_complete(cls, family)
        held = _ENTRIES.get(family)
        if held is not None and not _same_class(held.adapter, cls):
            raise AdapterRegistrationError(
                f"family {family!r} is already served by {held.origin}; "
                f"choose another name for {cls.__module__}:{cls.__qualname__}"
            )
        for model_type in types:
            owner = _BY_MODEL_TYPE.get(model_type)
            if owner is not None and owner != family:
                raise AdapterRegistrationError(
                    f"model type {model_type!r} is already served by family {owner!r} "
                    f"({_ENTRIES[owner].origin})"
                )
        if held is not None:  # re-registration of the same class: drop its old model types
            for model_type in held.model_types:
                _BY_MODEL_TYPE.pop(model_type, None)
        cls.family = family
        _ENTRIES[family] = AdapterEntry(family, cls, types, label or family)
        for model_type in types:
            _BY_MODEL_TYPE[model_type] = family
        return cls

    return decorate


def unregister_adapter(family: str) -> None:
    """Remove ``family`` from the table (tests, or replacing a built-in deliberately)."""
    entry = _ENTRIES.pop(family, None)
    if entry is None:
        raise UnsupportedModelError(f"family {family!r} is not registered")
    for model_type in entry.model_types:
        _BY_MODEL_TYPE.pop(model_type, None)


def _load_entries() -> None:
    """Import the built-in adapter modules and the entry-point plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = importlib.import_module(__package__ or "routescope.models.adapters")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in _NOT_FAMILIES and not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as exc:  # a broken plugin must not take every family down with it
            warnings.warn(
                f"routescope adapter plugin {point.name!r} ({point.value}) failed to load: "
                f"{type(exc).__name__}: {exc}",
                RuntimeWarning,
                stacklevel=2,
            )


def registered_adapters() -> tuple[AdapterEntry, ...]:
    """Every registered family, sorted by name."""
    _load_entries()
    return tuple(_ENTRIES[family] for family in sorted(_ENTRIES))


def supported_families() -> tuple[str, ...]:
    """The registered family names."""
    return tuple(entry.family for entry in registered_adapters())


def _unsupported(model_type: object) -> UnsupportedModelError:
    supported = ", ".join(supported_families())
    return UnsupportedModelError(
        f"model type {model_type!r} has no routescope adapter (supported: {supported}); "
        f"{HOW_TO_ADD}"
    )


def adapter_class(model_type: str) -> type[MoEAdapter]:
    """The adapter class serving ``model_type``; `UnsupportedModelError` naming the others."""
    _load_entries()
    family = _BY_MODEL_TYPE.get(str(model_type))
    if family is None:
        raise _unsupported(model_type)
    return _ENTRIES[family].adapter


def adapter_for(config: Any) -> MoEAdapter:
    """The adapter for a transformers config; `UnsupportedModelError` for other or dense models."""
    model_type = getattr(config, "model_type", None)
    adapter = adapter_class(str(model_type))(config)
    if not adapter.moe_layers:
        supported = ", ".join(supported_families())
        raise UnsupportedModelError(
            f"this {model_type} model has no MoE layers (dense configuration), nothing to record; "
            f"use an MoE checkpoint of a supported family ({supported})"
        )
    return adapter


def __getattr__(name: str) -> Any:
    """``SUPPORTED_FAMILIES`` and ``ADAPTERS`` (family -> class), read from the table when asked."""
    if name == "SUPPORTED_FAMILIES":
        return supported_families()
    if name == "ADAPTERS":
        return {entry.family: entry.adapter for entry in registered_adapters()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
