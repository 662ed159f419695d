"""routescope.steering: steering specs, interventions on routing, evaluation and presets."""

from routescope.steering.evaluate import (
    EvalSet,
    LoglikChange,
    RandomBaseline,
    SideBySide,
    loglik_change,
    random_baseline,
    random_spec,
    side_by_side,
)
from routescope.steering.interventions import (
    LayerEdit,
    SpecEdit,
    as_router_edit,
    edit_routing,
    model_shape,
    steered,
)
from routescope.steering.spec import Edit, ModelShape, SteeringSpec, SteeringSpecError

__all__ = [
    "Edit",
    "EvalSet",
    "LoglikChange",
    "RandomBaseline",
    "SideBySide",
    "loglik_change",
    "random_baseline",
    "random_spec",
    "side_by_side",
    "LayerEdit",
    "ModelShape",
    "SpecEdit",
    "SteeringSpec",
    "SteeringSpecError",
    "as_router_edit",
    "edit_routing",
    "model_shape",
    "steered",
]
