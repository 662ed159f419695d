"""Applying a steering spec to a model's routing (DESIGN.md §4.5).

`SpecEdit` turns a validated `SteeringSpec` into the collection engine's `RouterEdit`: for each MoE
layer with edits it recomputes the family's routing from the router's raw logits through the
adapter (`adapter.route(mask=…, force=…)`), so softmax/top-k order, norm_topk_prob, DeepSeek's
grouped selection and selection-only bias all stay the family's own. `steered(lm, spec)` installs
the same edit as torch forward hooks on the router modules, so plain HF `forward`/`generate` calls
run steered too. Both paths call one function (`edit_routing`), so they agree by construction.

Tokens whose routing an edit cannot touch keep the router's own output unchanged (e.g. a token that
did not select a deactivated expert), and an empty spec installs nothing: unsteered bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from routescope.models.loading import LoadedModel
from routescope.steering.spec import ModelShape, SteeringSpec

__all__ = ["LayerEdit", "SpecEdit", "edit_routing", "model_shape", "steered"]


def model_shape(lm: LoadedModel) -> ModelShape:
    """The shape a spec is validated against (MoE layers, E, k)."""
    return lm.shape


@dataclass(frozen=True)
class LayerEdit:
    """One layer's edits as expert sets, ready to apply."""

    deactivate: tuple[int, ...] = ()
    activate: tuple[int, ...] = ()
    scale: tuple[tuple[int, float], ...] = ()
    mode: str = "reroute"
    renormalize: bool = False

    @classmethod
    def from_spec(cls, spec: SteeringSpec, layer: int) -> LayerEdit:
        scale = tuple(
            sorted({(e.expert, e.factor) for e in spec.for_layer(layer) if e.action == "scale"})
        )
        return cls(
            deactivate=tuple(spec.experts(layer, "deactivate")),
            activate=tuple(spec.experts(layer, "activate")),
            scale=scale,
            mode=spec.mode,
            renormalize=spec.renormalize,
        )


def _expert_mask(experts: tuple[int, ...], num_experts: int, device: torch.device) -> torch.Tensor:
    mask = torch.zeros(num_experts, dtype=torch.bool, device=device)
    if experts:
        mask[list(experts)] = True
    return mask


def edit_routing(
    lm: LoadedModel,
    router: nn.Module,
    edit: LayerEdit,
    logits: torch.Tensor,
    weights: torch.Tensor,
    indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing ``(weights, indices)`` of one layer after ``edit``, in the router's dtypes.

    - deactivate/reroute: the experts are masked before top-k (next best fill the slot);
    - deactivate/drop: top-k as usual, then the experts' weights are zeroed (renormalize: the
      remaining weights are rescaled to the row's original sum);
    - activate: forced into every token's top-k, the other experts keeping their relative order;
    - scale(f): the expert's weight is multiplied by f where it is selected.
    Rows the edit does not affect keep the router's own output exactly.
    """
    adapter = lm.adapter
    num_experts = adapter.num_experts
    device = logits.device
    w_dtype, i_dtype = weights.dtype, indices.dtype
    new_w, new_i = weights, indices
    off = _expert_mask(edit.deactivate, num_experts, device)
    on = _expert_mask(edit.activate, num_experts, device)
    reroute = edit.mode == "reroute" and bool(edit.deactivate)
    if reroute or edit.activate:
        # rows that select a removed expert, or lack a forced one, need a new selection
        redo = torch.zeros(indices.shape[0], dtype=torch.bool, device=device)
        if reroute:
            redo |= off[indices].any(dim=-1)
        if edit.activate:
            forced = torch.as_tensor(edit.activate, dtype=indices.dtype, device=device)
            redo |= ~(indices[..., None] == forced).any(dim=-2).all(dim=-1)
        if bool(redo.any()):
            r_w, r_i = adapter.route(
                logits, router, mask=off if reroute else None, force=on if edit.activate else None
            )
            new_w = torch.where(redo[:, None], r_w.to(w_dtype), weights)
            new_i = torch.where(redo[:, None], r_i.to(i_dtype), indices)
    if edit.mode == "drop" and edit.deactivate:
        dropped = off[new_i]
        if bool(dropped.any()):
            w = new_w.float()
            kept = w.masked_fill(dropped, 0.0)
            if edit.renormalize:
                total, rest = w.sum(dim=-1, keepdim=True), kept.sum(dim=-1, keepdim=True)
                factor = torch.where(rest > 0, total / rest.clamp_min(1e-30), torch.ones_like(rest))
                kept = kept * factor
            row = dropped.any(dim=-1, keepdim=True)
            new_w = torch.where(row, kept.to(w_dtype), new_w)
    for expert, scale in edit.scale:
        sel = new_i == expert
        if bool(sel.any()):
            new_w = torch.where(sel, (new_w.float() * scale).to(w_dtype), new_w)
    return new_w, new_i


class SpecEdit:
    """A `RouterEdit` (see `routescope.collect.engine`) built from a spec validated against ``lm``.

    Called per MoE layer with the router's output; returns None for layers without edits.
    """

    def __init__(self, lm: LoadedModel, spec: SteeringSpec) -> None:
        spec.validate(model_shape(lm))
        self.spec = spec
        self.layer_edits: dict[int, LayerEdit] = {
            layer: LayerEdit.from_spec(spec, layer) for layer in spec.layers()
        }
        self._routers = {
            layer: lm.adapter.router_module(lm.model, layer) for layer in self.layer_edits
        }

    @property
    def is_empty(self) -> bool:
        return not self.layer_edits

    def __call__(
        self,
        lm: LoadedModel,
        layer: int,
        logits: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        edit = self.layer_edits.get(layer)
        if edit is None:
            return None
        return edit_routing(lm, self._routers[layer], edit, logits, weights, indices)


def as_router_edit(lm: LoadedModel, spec: SteeringSpec | None) -> SpecEdit | None:
    """The engine's `steering` argument for ``spec``: None when there is nothing to change."""
    if spec is None:
        return None
    edit = SpecEdit(lm, spec)
    return None if edit.is_empty else edit


@contextmanager
def steered(lm: LoadedModel, spec: SteeringSpec | SpecEdit | None) -> Iterator[SpecEdit | None]:
    """Apply ``spec`` to every plain forward of ``lm.model`` inside the block (forward, generate).

    ``spec`` may also be a prebuilt `SpecEdit` (e.g. the one given to `collect_batch`).

    Implemented as forward hooks on the router modules that replace the router's output (through
    the adapter's ``unpack``/``pack``, as the engine does);
    an empty or None spec installs no hook at all. Hooks are removed on exit, even on error.
    """
    if isinstance(spec, SpecEdit):
        edit = None if spec.is_empty else spec
    else:
        edit = as_router_edit(lm, spec)
    handles = []
    try:
        if edit is not None:
            for layer in edit.layer_edits:
                router = edit._routers[layer]

                def hook(module: nn.Module, args: object, out: Any, layer: int = layer) -> Any:
                    new = edit(lm, layer, *lm.adapter.unpack(out))
                    return out if new is None else lm.adapter.pack(out, new[0], new[1])

                handles.append(router.register_forward_hook(hook))
        yield edit
    finally:
        for h in handles:
            h.remove()
