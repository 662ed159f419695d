"""Mixtral (model_type ``mixtral``): every layer MoE, router ``mlp.gate`` (MixtralTopKRouter).

Routing: softmax over E logits, top-k, always renormalized over the k (the weights sum to 1).
"""

from __future__ import annotations

from routescope.models.adapters.base import SoftmaxTopKAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("mixtral", label="Mixtral")
class MixtralAdapter(SoftmaxTopKAdapter):
    router_attr = "mlp.gate"
    experts_attr = "num_local_experts"
    routing = "softmax over E, top-k, renormalized"
    weights_doc = "softmax probabilities of the top-k experts, renormalized to sum 1"

    @property
    def norm_topk_prob(self) -> bool:
        return True
