"""GLM-4.5 MoE (model_type ``glm4_moe``): DeepSeek-V3 routing under another name.

Layers below ``first_k_dense_replace`` are dense; router ``mlp.gate`` (Glm4MoeTopkRouter) applies
sigmoid scores, the selection-only ``e_score_correction_bias``, group-limited top-k, optional
renormalization and ``routed_scaling_factor``, exactly as DeepSeek-V3 (see that adapter).
"""

from __future__ import annotations

from routescope.models.adapters.deepseek_v3 import DeepseekV3Adapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("glm4_moe", label="GLM-4.5 MoE")
class Glm4MoeAdapter(DeepseekV3Adapter):
    """DeepSeek-V3 routing; only the family name differs."""
