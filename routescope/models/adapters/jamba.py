"""Jamba (model_type ``jamba``): hybrid Mamba/attention layers, MoE every ``expert_layer_period``.

A layer is MoE when ``num_experts > 1`` and ``layer % expert_layer_period == expert_layer_offset``
(its feed-forward is then a JambaSparseMoeBlock with router ``feed_forward.router``). Routing:
softmax over E, top-k, no renormalization (the weights are the raw top-k probabilities).
"""

from __future__ import annotations

from routescope.models.adapters.base import SoftmaxTopKAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("jamba", label="Jamba")
class JambaAdapter(SoftmaxTopKAdapter):
    router_attr = "feed_forward.router"
    experts_attr = "num_experts"
    routing = "softmax over E, top-k, not renormalized"
    weights_doc = "softmax probabilities of the top-k experts (not renormalized)"

    def is_moe_layer(self, layer: int) -> bool:
        cfg = self.config
        if not 0 <= layer < self.num_layers or self.num_experts <= 1:
            return False
        return layer % int(cfg.expert_layer_period) == int(cfg.expert_layer_offset)

    @property
    def norm_topk_prob(self) -> bool:
        return False
