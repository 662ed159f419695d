"""What the offloading what-if charges (DESIGN §9): one expert load, one MoE layer's compute, the
rest of a token's forward, and how they follow from a model's config.

`OffloadCost` is what the simulator (`routescope.analysis.offload`) takes; `model_cost` derives
it from a config dict (config.json) with any value overridden; `routescope.models.costs.run_cost`
finds a run's model config on this machine and calls it. Plain arithmetic, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np

from routescope.core.errors import InvalidParameterError

#: Host→device bandwidth: a PCIe 4.0 x16 link in practice (GB/s, 1 GB = 1e9 bytes).
DEFAULT_BANDWIDTH_GBPS = 25.0
#: Effective compute rate of a batch-1 decode step. Such a step reads every active weight once
#: from GPU memory, so it runs at about (memory bandwidth) FLOP/s at 2 bytes per parameter:
#: ~1 TB/s, a consumer GPU, is ~1 TFLOP/s. State yours with `tflops` or measure `layer_ms`.
DEFAULT_TFLOPS = 1.0
PS = 1_000_000_000_000  # picoseconds per second


@dataclass(frozen=True)
class OffloadCost:
    """What a load and a layer cost: expert and non-expert bytes, link bandwidth (GB/s; inf for
    an infinitely fast link), compute per MoE layer per token (ms: one value or one per MoE
    layer) and the rest of a token's forward (`other_ms`), with a note of where they came from."""

    expert_bytes: int
    layer_ms: float | tuple[float, ...]
    nonexpert_bytes: int = 0
    bandwidth_gbps: float = DEFAULT_BANDWIDTH_GBPS
    other_ms: float = 0.0
    note: str = ""

    def __post_init__(self) -> None:
        if self.expert_bytes < 0 or self.nonexpert_bytes < 0:
            raise InvalidParameterError("expert and non-expert sizes must not be negative")
        if not self.bandwidth_gbps > 0:
            raise InvalidParameterError(
                f"bandwidth {self.bandwidth_gbps} GB/s must be positive (e.g. 25 for PCIe 4.0 x16)"
            )
        lay = self.layer_ms if isinstance(self.layer_ms, tuple) else (self.layer_ms,)
        if any(not (x >= 0 and math.isfinite(x)) for x in (*lay, self.other_ms)):
            raise InvalidParameterError("compute times must be finite and not negative")

    @property
    def load_ps(self) -> int:
        """Picoseconds to load one expert (0 on an infinitely fast link)."""
        if math.isinf(self.bandwidth_gbps):
            return 0
        return int(round(self.expert_bytes / (self.bandwidth_gbps * 1e9) * PS))

    def layer_ps(self, n_layers: int) -> np.ndarray:
        """int64[n_layers]: compute picoseconds of each MoE layer."""
        ms = self.layer_ms
        if isinstance(ms, tuple):
            if len(ms) != n_layers:
                raise InvalidParameterError(
                    f"{len(ms)} per-layer compute times for a run with {n_layers} MoE layers"
                )
            vals = np.asarray(ms, dtype=np.float64)
        else:
            vals = np.full(n_layers, float(ms))
        return np.round(vals * 1e9).astype(np.int64)

    @property
    def other_ps(self) -> int:
        return int(round(self.other_ms * 1e9))


@dataclass(frozen=True)
class ModelDims:
    """The sizes of a model that costs are computed from (read from its config)."""

    hidden: int
    expert_intermediate: int
    num_layers: int
    attention_params: int
    vocab: int
    tied_embeddings: bool
    shared_intermediate: int = 0
    dense_intermediate: int = 0
    bytes_per_param: int = 2

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelDims:
        """From a transformers config dict (config.json); one clear error naming a missing key."""
        cfg = dict(config)
        if "hidden_size" not in cfg and isinstance(cfg.get("text_config"), Mapping):
            cfg = {**cfg, **cfg["text_config"]}

        def need(*keys: str) -> int:
            for key in keys:
                if cfg.get(key) is not None:
                    return int(cfg[key])
            raise InvalidParameterError(
                f"the model config has no {keys[0]}: pass --expert-mb and --layer-ms instead"
            )

        hidden = need("hidden_size", "d_model", "n_embd")
        inter = need("moe_intermediate_size", "expert_intermediate_size", "intermediate_size")
        heads = need("num_attention_heads", "n_head")
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        attn = hidden * heads * head_dim + 2 * hidden * kv * head_dim + heads * head_dim * hidden
        shared = int(
            cfg.get("shared_expert_intermediate_size")
            or cfg.get("shared_intermediate_size")
            or (cfg.get("n_shared_experts") or 0) * (cfg.get("moe_intermediate_size") or 0)
        )
        dense = int(cfg.get("intermediate_size") or inter)
        dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
        return cls(
            hidden=hidden,
            expert_intermediate=inter,
            num_layers=need("num_hidden_layers", "n_layer"),
            attention_params=attn,
            vocab=int(cfg.get("vocab_size") or 0),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", True)),
            shared_intermediate=shared,
            dense_intermediate=dense,
            bytes_per_param=4 if "32" in dtype else 2,
        )


class CostOverrides(TypedDict, total=False):
    """Values given instead of what the model's config implies: `model_cost`'s keywords."""

    expert_mb: float | None
    nonexpert_gb: float | None
    bandwidth_gbps: float
    tflops: float | None
    layer_ms: float | None
    bytes_per_param: int | None


def model_cost(
    config: Mapping[str, Any] | None,
    moe_layers: int,
    top_k: int,
    num_experts: int,
    *,
    expert_mb: float | None = None,
    nonexpert_gb: float | None = None,
    bandwidth_gbps: float = DEFAULT_BANDWIDTH_GBPS,
    tflops: float | None = None,
    layer_ms: float | None = None,
    bytes_per_param: int | None = None,
) -> OffloadCost:
    """Costs from the model's config (dict of config.json; None when it cannot be read), each
    overridable: expert bytes = 3 × hidden × expert intermediate × bytes per parameter; compute
    per MoE layer = 2 × its active parameters (attention, router, k routed and any shared
    experts) / `tflops`; `other_ms` = dense layers and the LM head the same way."""
    dims = ModelDims.from_config(config) if config else None
    if dims is None and (expert_mb is None or layer_ms is None):
        missing = " and ".join(
            flag
            for flag, val in (("--expert-mb", expert_mb), ("--layer-ms", layer_ms))
            if val is None
        )
        raise InvalidParameterError(
            f"the run's model config is not available here, so pass {missing} (e.g. "
            "--expert-mb 12.6 --layer-ms 0.13 for OLMoE-1B-7B's experts in bf16)"
        )
    notes = []
    rate = float(tflops if tflops is not None else DEFAULT_TFLOPS)
    if rate <= 0:
        raise InvalidParameterError(f"compute rate {rate} TFLOP/s must be positive")
    bpp = int(bytes_per_param or (dims.bytes_per_param if dims else 2))
    if expert_mb is not None:
        expert_bytes = int(round(float(expert_mb) * 1e6))
        notes.append(f"expert {expert_mb} MB (given)")
    else:
        assert dims is not None
        expert_bytes = 3 * dims.hidden * dims.expert_intermediate * bpp
        notes.append(
            f"expert 3×{dims.hidden}×{dims.expert_intermediate}×{bpp} B = "
            f"{expert_bytes / 1e6:.3g} MB"
        )
    other_ms = 0.0
    if layer_ms is not None:
        lay_ms = float(layer_ms)
        notes.append(f"{lay_ms:g} ms per MoE layer (given)")
    else:
        assert dims is not None
        h = dims.hidden
        active = (
            dims.attention_params
            + h * num_experts
            + top_k * 3 * h * dims.expert_intermediate
            + 3 * h * dims.shared_intermediate
        )
        dense_layers = max(0, dims.num_layers - moe_layers)
        other = dense_layers * (dims.attention_params + 3 * h * dims.dense_intermediate)
        other += dims.vocab * h
        lay_ms = 2 * active / (rate * 1e12) * 1e3
        other_ms = 2 * other / (rate * 1e12) * 1e3
        notes.append(f"{2 * active / 1e6:.4g} MFLOP per MoE layer at {rate:g} TFLOP/s")
    if nonexpert_gb is not None:
        nonexpert = int(round(float(nonexpert_gb) * 1e9))
    elif dims is not None:
        h = dims.hidden
        params = dims.vocab * h * (1 if dims.tied_embeddings else 2)
        params += dims.num_layers * dims.attention_params
        params += moe_layers * (h * num_experts + 3 * h * dims.shared_intermediate)
        params += max(0, dims.num_layers - moe_layers) * 3 * h * dims.dense_intermediate
        nonexpert = params * bpp
    else:
        nonexpert = 0
        notes.append("non-expert weights not counted (pass --nonexpert-gb)")
    notes.append(f"link {bandwidth_gbps:g} GB/s")
    return OffloadCost(
        expert_bytes=expert_bytes,
        layer_ms=lay_ms,
        nonexpert_bytes=nonexpert,
        bandwidth_gbps=float(bandwidth_gbps),
        other_ms=other_ms,
        note="; ".join(notes),
    )
