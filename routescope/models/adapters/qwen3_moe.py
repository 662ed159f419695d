"""Qwen3-MoE (model_type ``qwen3_moe``): router ``mlp.gate`` (Qwen3MoeTopKRouter), no shared expert.

A layer is MoE unless it is listed in ``mlp_only_layers`` or ``(layer + 1) % decoder_sparse_step != 0``
(as in the modeling code). Routing: softmax over E, top-k, renormalized when ``norm_topk_prob``.
"""

from __future__ import annotations

from routescope.models.adapters.base import SoftmaxTopKAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("qwen3_moe", label="Qwen3-MoE")
class Qwen3MoeAdapter(SoftmaxTopKAdapter):
    router_attr = "mlp.gate"
    experts_attr = "num_experts"

    def is_moe_layer(self, layer: int) -> bool:
        cfg = self.config
        if not 0 <= layer < self.num_layers:
            return False
        step = int(getattr(cfg, "decoder_sparse_step", 1) or 1)
        only_mlp = list(getattr(cfg, "mlp_only_layers", None) or [])
        return layer not in only_mlp and self.num_experts > 0 and (layer + 1) % step == 0
