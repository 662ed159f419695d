"""Loading an MoE model (hub id or local path) with its tokenizer and family adapter.

``LoadedModel`` is what the collection engine, the steering module and the CLI pass around: the HF
model in eval mode, its tokenizer, the adapter that knows its routers, and a cached nnsight wrapper.
``config_shape`` answers "which MoE layers, E, k" from a model's config alone (no weights).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from routescope.core.errors import InvalidParameterError, RoutescopeError, UnsupportedModelError
from routescope.core.shape import ModelShape
from routescope.models.adapters import MoEAdapter, adapter_for
from routescope.models.dtypes import DTYPES

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEMO_MODEL_ID",
    "LoadedModel",
    "ModelLoadError",
    "adapter_for",
    "config_shape",
    "load_model",
]


class ModelLoadError(RoutescopeError):
    """The model path or hub id could not be loaded."""


@dataclass
class LoadedModel:
    """An MoE causal LM ready for collection: model (eval mode), tokenizer, adapter, provenance."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    adapter: MoEAdapter
    model_id: str
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    _nnsight: Any = field(default=None, init=False, repr=False, compare=False)
    _router_envoys: list[Any] | None = field(default=None, init=False, repr=False, compare=False)
    _router_modules: list[Any] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        model_id: str = "in-memory",
    ) -> LoadedModel:
        """Wrap an already-built HF model (e.g. from a config in tests); picks the adapter."""
        adapter = adapter_for(model.config)
        for layer in adapter.moe_layers:
            try:
                adapter.router_module(model, layer)
            except AttributeError as exc:
                raise UnsupportedModelError(
                    f"{model_id}: no router module at {adapter.router_path(layer)!r} although the "
                    f"config says {adapter.family} (custom remote code?); load it with the "
                    "transformers implementation (trust_remote_code=False)"
                ) from exc
        model.eval()
        param = next(model.parameters())
        return cls(
            model=model,
            tokenizer=tokenizer,
            adapter=adapter,
            model_id=model_id,
            revision=None,
            dtype=str(param.dtype).removeprefix("torch."),
            device=str(param.device),
        )

    # ---- what the store's `runs` row needs -------------------------------------------------
    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def moe_layers(self) -> list[int]:
        return self.adapter.moe_layers

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def num_experts(self) -> int:
        return self.adapter.num_experts

    @property
    def top_k(self) -> int:
        return self.adapter.top_k

    @property
    def num_shared_experts(self) -> int:
        return self.adapter.num_shared_experts

    @property
    def norm_topk_prob(self) -> bool:
        return self.adapter.norm_topk_prob

    @property
    def shape(self) -> ModelShape:
        """MoE layers, E and k: what a steering spec is validated against."""
        return self.adapter.shape

    def require_tokenizer(self, what: str) -> PreTrainedTokenizerBase:
        """The tokenizer, or one clear error saying that `what` needs one."""
        if self.tokenizer is None:
            raise InvalidParameterError(f"{self.model_id} has no tokenizer; {what} needs one")
        return self.tokenizer

    @property
    def pad_token_id(self) -> int:
        """The id put in padded positions: the config's pad token, else the tokenizer's, else
        EOS, else 0. Padded positions are masked out, so any id inside the vocabulary serves;
        this is also the ``pad_token_id`` given to ``generate``."""
        for candidate in (
            self.model.config.pad_token_id,
            getattr(self.tokenizer, "pad_token_id", None),
            self.model.config.eos_token_id,
        ):
            if isinstance(candidate, list | tuple):
                candidate = candidate[0] if candidate else None
            if candidate is not None:
                return int(candidate)
        return 0

    # ---- tracing -------------------------------------------------------------------------------
    @property
    def nnsight(self) -> Any:
        """The nnsight wrapper of ``model``, built once."""
        if self._nnsight is None:
            from nnsight import NNsight

            self._nnsight = NNsight(self.model)
        return self._nnsight

    @property
    def router_envoys(self) -> list[Any]:
        """nnsight envoys of the router modules, one per MoE layer in ``moe_layers`` order."""
        if self._router_envoys is None:
            wrapper = self.nnsight
            self._router_envoys = [
                wrapper.get(self.adapter.router_path(i)) for i in self.moe_layers
            ]
        return self._router_envoys

    def router_modules(self) -> list[Any]:
        """The router torch modules, one per MoE layer in ``moe_layers`` order."""
        if self._router_modules is None:
            self._router_modules = [
                self.adapter.router_module(self.model, i) for i in self.moe_layers
            ]
        return self._router_modules


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_config(
    model: str, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[str, PretrainedConfig]:
    """``(resolved path or hub id, its transformers config)``; one-line `ModelLoadError` for a
    missing path, a directory that is not a model, or a config that cannot be read."""
    model = os.path.expanduser(_demo_alias(model))
    looks_like_path = model.startswith(("/", "./", "../")) or model.count("/") > 1
    if looks_like_path and not os.path.exists(model):
        raise ModelLoadError(
            f"model path {model!r} does not exist: pass a model directory or hub id"
        )
    if os.path.exists(model) and not os.path.isfile(os.path.join(model, "config.json")):
        raise ModelLoadError(
            f"{model!r} is not a model directory (no config.json): pass a directory saved with "
            "save_pretrained, or a hub id"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            model, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot load model {model!r} ({_first_line(exc)}): pass a local model directory, or a "
            "hub id with network access"
        ) from exc
    return model, config


def config_shape(
    model: str, revision: str | None = None, trust_remote_code: bool = False
) -> ModelShape:
    """A model's MoE layers, E and k from its config alone (no weights load), e.g. to validate a
    steering spec before loading; `UnsupportedModelError` for an unsupported or dense model."""
    _, config = _read_config(model, revision, trust_remote_code)
    return adapter_for(config).shape


def load_model(
    model: str,
    dtype: str = "auto",
    device: str = "cpu",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    quiet: bool = False,
) -> LoadedModel:
    """Load a hub id or local directory as a ``LoadedModel``; fails fast on unsupported families.

    ``quiet`` hides transformers' weight-loading progress bar.

    The config is read first, so an unsupported or dense model is rejected before any weights load.
    """
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    model, config = _read_config(model, revision, trust_remote_code)
    adapter_for(config)  # unsupported family -> one clear line before weights load
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "dtype": "auto" if dtype == "auto" else getattr(torch, dtype),
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load weights of {model!r}: {_first_line(exc)}") from exc
    finally:
        if quiet and bars_were_on:
            hf_logging.enable_progress_bar()
    if device_map is None:
        hf_model = hf_model.to(device)  # type: ignore[arg-type]  # transformers wraps .to
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, TypeError):
        tokenizer = None
    is_demo = os.path.realpath(model) == os.path.realpath(_demo_path())
    lm = LoadedModel.from_model(hf_model, tokenizer, model_id=DEMO_MODEL_ID if is_demo else model)
    lm.revision = revision
    return lm


#: the model_id recorded for the shipped demo model: its path differs between checkouts, and
#: expert notes and presets are keyed by model_id
DEMO_MODEL_ID = "routescope/demo"


def _demo_path() -> str:
    from routescope.models.demo import DEMO_MODEL_PATH

    return str(DEMO_MODEL_PATH)


def _demo_alias(model: str) -> str:
    """'demo' and DEMO_MODEL_ID name the shipped demo model's directory."""
    return _demo_path() if model in ("demo", DEMO_MODEL_ID) else model
