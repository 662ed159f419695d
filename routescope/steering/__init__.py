"""routescope.steering: steering specs, interventions on routing, evaluation and presets.

Specs and presets need no torch; the torch-side names (interventions, evaluation) are imported on
first use, so `routescope presets …` and the dashboard's preset editor stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

from routescope.steering.presets import (
    Preset,
    PresetError,
    create_preset,
    delete_preset,
    get_preset,
    list_presets,
    resolve_spec,
    update_preset,
)
from routescope.steering.spec import Edit, ModelShape, SteeringSpec, SteeringSpecError

_LAZY = {
    "LayerEdit": "interventions",
    "SpecEdit": "interventions",
    "as_router_edit": "interventions",
    "edit_routing": "interventions",
    "model_shape": "interventions",
    "steered": "interventions",
    "EvalSet": "evaluate",
    "LoglikChange": "evaluate",
    "RandomBaseline": "evaluate",
    "SideBySide": "evaluate",
    "loglik_change": "evaluate",
    "random_baseline": "evaluate",
    "random_spec": "evaluate",
    "side_by_side": "evaluate",
}

__all__ = [
    "Edit",
    "ModelShape",
    "Preset",
    "PresetError",
    "SteeringSpec",
    "SteeringSpecError",
    "create_preset",
    "delete_preset",
    "get_preset",
    "list_presets",
    "resolve_spec",
    "update_preset",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"routescope.steering.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'routescope.steering' has no attribute {name!r}")
