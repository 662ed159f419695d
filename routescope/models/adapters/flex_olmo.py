"""FlexOlmo (model_type ``flex_olmo``): OLMoE-style routing, every layer MoE, router ``mlp.gate``.

Routing: softmax over E logits, top-k, renormalized when ``norm_topk_prob``.
"""

from __future__ import annotations

from routescope.models.adapters.olmoe import OlmoeAdapter


class FlexOlmoAdapter(OlmoeAdapter):
    family = "flex_olmo"
