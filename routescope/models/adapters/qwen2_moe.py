"""Qwen2-MoE (model_type ``qwen2_moe``): router ``mlp.gate`` plus one always-on shared expert.

Dense/MoE layers are chosen exactly as in Qwen3-MoE (``mlp_only_layers``, ``decoder_sparse_step``).
The shared expert's own sigmoid gate (``mlp.shared_expert_gate``) is not part of the routed weights:
recorded weights are the softmax top-k probabilities of the routed experts (renormalized when
``norm_topk_prob``).
"""

from __future__ import annotations

from routescope.models.adapters.qwen3_moe import Qwen3MoeAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("qwen2_moe", label="Qwen2-MoE")
class Qwen2MoeAdapter(Qwen3MoeAdapter):
    @property
    def num_shared_experts(self) -> int:
        return 1 if int(getattr(self.config, "shared_expert_intermediate_size", 0) or 0) > 0 else 0
