"""FlexOlmo (model_type ``flex_olmo``): OLMoE-style routing, every layer MoE, router ``mlp.gate``.

Routing: softmax over E logits, top-k, renormalized when ``norm_topk_prob``.
"""

from __future__ import annotations

from routescope.models.adapters.olmoe import OlmoeAdapter
from routescope.models.adapters.registry import register_adapter


@register_adapter("flex_olmo", label="FlexOlmo")
class FlexOlmoAdapter(OlmoeAdapter):
    """OLMoE's layout and routing; only the family name differs."""
