"""`--model` for imports: a local model directory's config (never its weights) and tokenizer."""

from __future__ import annotations

import os

from routescope.core.errors import InvalidParameterError
from routescope.importers.base import ModelInfo


def model_info(model: str) -> ModelInfo:
    """The routing shape from `model`'s config.json and, if it has one, its tokenizer.

    Only local directories (a hub id needs the network, which an import does not use): save a
    config with `save_pretrained` (the weights are not read).
    """
    path = os.path.expanduser(model)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise InvalidParameterError(
            f"--model {model!r} is not a local model directory with a config.json; an import reads "
            "only the config (and tokenizer) of a directory saved with save_pretrained"
        )
    from transformers import AutoConfig, AutoTokenizer

    from routescope.models import adapter_for

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InvalidParameterError(f"cannot read the config in {model!r}: {first}") from None
    adapter = adapter_for(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError):
        tokenizer = None
    return ModelInfo(
        model_id=model,
        family=adapter.family,
        num_layers=adapter.num_layers,
        moe_layers=tuple(adapter.moe_layers),
        num_experts=adapter.num_experts,
        top_k=adapter.top_k,
        num_shared_experts=adapter.num_shared_experts,
        norm_topk_prob=adapter.norm_topk_prob,
        adapter=adapter,
        tokenizer=tokenizer,
    )
