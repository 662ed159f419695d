"""The importer registry: format name → reader, a one-line description, the files it takes.

The CLI's help and errors and docs/formats.md read this table; a new format is one module with a
`read(paths, opts)` function plus one entry here.
"""

from __future__ import annotations

from routescope.core.errors import InvalidParameterError
from routescope.importers.base import FormatInfo

FORMATS: dict[str, FormatInfo] = {
    f.name: f
    for f in (
        FormatInfo(
            name="vllm",
            description="vLLM --enable-return-routed-experts: per-request routed expert ids",
            files=".npz (offline API: token ids + routing arrays), .npy (routing only), "
            ".json/.jsonl (HTTP responses: base64 .npy or encoded arrays, prompt-start offset)",
            module="routescope.importers.vllm",
            has_weights=False,
        ),
        FormatInfo(
            name="sglang",
            description="SGLang returned routing (base64 int32) or expert-distribution recorder dumps",
            files=".json/.jsonl (responses with meta_info.routed_experts), .pt per_token dumps "
            "(one per rank), .pt stat dumps (counts only: a load-only run)",
            module="routescope.importers.sglang",
            has_weights=False,
        ),
        FormatInfo(
            name="megatron",
            description="Megatron-Core router tracing (--moe-routing-trace-path)",
            files="router_trace_rank*.jsonl, one record per (step, layer) per rank",
            module="routescope.importers.megatron",
            has_weights=False,
        ),
        FormatInfo(
            name="flame",
            description="FLAME-MoE-Traces layout: token ids + per-iteration, per-layer actives",
            files="a model directory (samples/*.parquet, actives/iter_N/layer_NN.parquet), or "
            "samples files plus one iteration's layer files",
            module="routescope.importers.flame",
            has_weights=True,
        ),
        FormatInfo(
            name="moe-lrc",
            description="moe-lrc router logits, routed by the model family's own rule (--model)",
            files="<model>_<layer>.safetensors router logits (keys: data sets), optional "
            "<model>.safetensors token ids",
            module="routescope.importers.moe_lrc",
            has_weights=True,
        ),
    )
}


def get_format(name: str) -> FormatInfo:
    """The registry entry, or one line listing the formats."""
    try:
        return FORMATS[name]
    except KeyError:
        known = "; ".join(f"{f.name} ({f.description})" for f in FORMATS.values())
        raise InvalidParameterError(
            f"unknown trace format {name!r}; formats are: {known}"
        ) from None
