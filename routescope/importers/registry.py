"""The importer registry: format name → reader, a one-line description, the files it takes.

The CLI's help and errors and docs/formats.md read this table (a `routescope.core.registry.
Registry`, so an unknown name is one line listing every format). A new format is one module with a
`read(paths, opts)` function (a `routescope.importers.base.Reader`) plus one entry here; the entry
names the module, which is imported only when the format is used (a reader may need torch)::

    FormatInfo(
        name="myengine",
        description="MyEngine routing dumps",
        files=".npz per request",
        module="routescope.importers.myengine",
        has_weights=False,
    ),
"""

from __future__ import annotations

from routescope.core.registry import Registry
from routescope.importers.base import FormatInfo

FORMATS: Registry[FormatInfo] = Registry(
    "trace format", listing=lambda f: f"{f.name} ({f.description})", sep="; "
)
for _format in (
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
):
    FORMATS.register(_format)


def get_format(name: str) -> FormatInfo:
    """The registry entry, or one line listing the formats."""
    return FORMATS.get_entry(name)
