"""routescope.steering: steering specs, interventions on routing, evaluation and presets."""

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
