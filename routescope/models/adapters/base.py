"""The adapter contract: everything routescope needs to know about one MoE architecture family.

An adapter is the only place that knows a family's module names and its routing function. It answers,
per decoder layer, whether the layer is MoE and where its router module lives, and it re-implements the
router's selection as a pure torch function over the router's raw logits, so that the steering module
can re-run routing with an expert masked out or forced in. The contract, the starter adapter for each
routing style and the steps to add a family are in README.md next to this file.

Conventions shared by every adapter:
- "logits" are the router's raw pre-selection scores, ``router_output[0]``, shape ``(tokens, E)``.
- ``route`` returns ``(weights, indices)`` of shape ``(tokens, k)`` in rank order (rank 0 = highest
  selection score), the weights being exactly the gate weights the model multiplies expert outputs by.
- ``full_probs`` returns the full router distribution ``(tokens, E)`` as float32.
- ``rank_experts`` returns the router's top-``m`` ranking ``(tokens, m)`` for any ``m <= E`` (what
  speculative-gate recording stores: layer l's router applied to the router input of layer l - d).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from routescope.core.shape import ModelShape


def _expand_expert_mask(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Broadcast a bool mask given as ``(E,)`` or ``(tokens, E)`` to ``like``'s shape."""
    if mask is None:
        return None
    mask = mask.to(device=like.device, dtype=torch.bool)
    return mask.expand_as(like)


def ranked_within_then_rest(
    scores: torch.Tensor, keep: torch.Tensor, m: int, candidates: int
) -> torch.Tensor:
    """Top-``m`` expert ids ``(tokens, m)`` by ``scores``: the experts in ``keep`` (bool, exactly
    ``candidates`` per row, e.g. a group-limited router's kept groups) first, then the others.

    With ``m <= candidates`` this is the top-``m`` of ``scores`` restricted to ``keep``, i.e. the
    family's own selection; beyond that, the experts the group limit excluded follow by score.
    """
    first = torch.topk(scores.masked_fill(~keep, float("-inf")), min(m, candidates), dim=-1).indices
    if m <= candidates:
        return first
    rest = torch.topk(scores.masked_fill(keep, float("-inf")), m - candidates, dim=-1).indices
    return torch.cat([first, rest], dim=-1)


def remove_experts(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``scores`` with the experts in ``mask`` (bool ``(E,)`` or ``(tokens, E)``) set to -inf, so
    top-k never picks them; unchanged when ``mask`` is None."""
    mask = _expand_expert_mask(mask, scores)
    return scores if mask is None else scores.masked_fill(mask, float("-inf"))


class MoEAdapter(ABC):
    """Knows one family's layout (router module per layer) and routing function.

    A concrete adapter sets ``router_attr`` (the router's path inside a decoder layer) and
    ``experts_attr`` (the config attribute holding E), implements ``selection_scores`` and
    ``gate_weights`` (or inherits them from a routing-style base below), overrides
    ``is_moe_layer`` if some layers are dense, and registers with
    ``@register_adapter("<model_type>")``, which also sets ``family``.
    """

    #: the family's name, its transformers ``model_type``; set by ``@register_adapter``
    family: ClassVar[str]
    #: dotted path of the router module inside one decoder layer, e.g. "mlp.gate"
    router_attr: ClassVar[str]
    #: config attribute holding the number of routed experts E, e.g. "num_experts"
    experts_attr: ClassVar[str | None] = None
    #: dotted path of the decoder layer list from the CausalLM root
    layers_path: ClassVar[str] = "model.layers"
    #: what ``full_probs`` returns: "softmax" (rows sum to 1) or "sigmoid" (independent scores)
    probs_kind: ClassVar[str] = "softmax"
    #: whether the router already returns its top-k in rank order (torch.topk(sorted=True))
    output_sorted: ClassVar[bool] = True
    #: the routing function in a few words (the registry's table and the docs show it)
    routing: ClassVar[str] = ""
    #: one line saying what the recorded weights are for this family
    weights_doc: ClassVar[str] = ""
    #: path, inside a decoder layer, of the module whose input a *dense* layer would route (its
    #: MLP); None: the router's parent (``"mlp.gate"`` -> ``"mlp"``). Speculative recording only.
    mlp_attr: ClassVar[str | None] = None

    def __init__(self, config: Any) -> None:
        self.config = config

    # ---- layout -------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` has a router (dense layers have none).

        Default: every decoder layer is MoE. Families with dense layers override this, reading
        the rule from the config (never assuming it).
        """
        return 0 <= layer < self.num_layers

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_layers) if self.is_moe_layer(i)]

    def router_path(self, layer: int) -> str:
        """Dotted path of layer ``layer``'s router module from the CausalLM root."""
        if not self.is_moe_layer(layer):
            raise ValueError(f"layer {layer} of this {self.family} model is dense (no router)")
        return f"{self.layers_path}.{layer}.{self.router_attr}"

    def router_module(self, model: nn.Module, layer: int) -> nn.Module:
        return model.get_submodule(self.router_path(layer))

    def router_input_path(self, layer: int) -> str:
        """Dotted path of the module whose first input is layer ``layer``'s router input: the
        router of an MoE layer; the MLP of a dense layer (the same post-attention-norm hidden
        state, which a router there would have routed). Used by speculative recording."""
        if self.is_moe_layer(layer):
            return self.router_path(layer)
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is outside this {self.family} model")
        mlp = self.mlp_attr or self.router_attr.rpartition(".")[0]
        return f"{self.layers_path}.{layer}.{mlp}"

    @property
    def num_experts(self) -> int:
        """Routed experts per MoE layer (E), read from config attribute ``experts_attr``;
        shared experts not counted."""
        return int(getattr(self.config, str(self.experts_attr)))

    @property
    def top_k(self) -> int:
        return int(self.config.num_experts_per_tok)

    @property
    def num_shared_experts(self) -> int:
        """Always-on experts per MoE layer (not routed, never recorded)."""
        return 0

    @property
    def norm_topk_prob(self) -> bool:
        """Whether the k gate weights are renormalized to sum to 1 (before any scaling)."""
        return bool(getattr(self.config, "norm_topk_prob", False))

    @property
    def shape(self) -> ModelShape:
        """MoE layers, E and k: what a steering spec is validated against."""
        return ModelShape.of(self)

    # ---- the router module's output ----------------------------------------------------------
    def unpack(self, output: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits (tokens, E), weights (tokens, k), indices (tokens, k))`` from a router output.

        Most transformers 5.x routers return exactly this tuple; families whose routers return
        something else override this and ``pack``.
        """
        return output[0], output[1], output[2]

    def pack(self, output: Any, weights: torch.Tensor, indices: torch.Tensor) -> Any:
        """A router output like ``output`` but carrying the given (edited) routing."""
        return (output[0], weights.to(output[1].dtype), indices)

    # ---- routing ------------------------------------------------------------------------------
    @abstractmethod
    def selection_scores(
        self, logits: torch.Tensor, router: nn.Module, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The scores top-k ranks over, ``(tokens, E)`` float; masked experts get -inf.

        The mask is applied where the family would have to apply it to remove the expert before
        selection (e.g. before group selection in DeepSeek-V3).
        """

    @abstractmethod
    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gate weights the model would use for the chosen ``indices`` (tokens, k)."""

    def route(
        self,
        logits: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
        force: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The family's routing from raw router logits: ``(weights, indices)`` in rank order.

        ``mask`` (bool ``(E,)`` or ``(tokens, E)``) removes experts before top-k, so the next best
        fill their slots; ``force`` puts experts into every token's top-k (ranked first) while the
        other experts keep their relative order. With neither, this equals the router's own output.
        """
        scores = self.selection_scores(logits, router, mask)
        force = _expand_expert_mask(force, scores)
        if force is not None:
            scores = scores.masked_fill(force, float("inf"))
        indices = torch.topk(scores, self.top_k, dim=-1, sorted=True).indices
        return self.gate_weights(logits, indices, router, mask), indices

    def router_logits(self, router: Any, hidden: torch.Tensor) -> torch.Tensor:
        """The raw logits ``(tokens, E)`` that ``router``'s forward computes from ``hidden``
        ``(tokens, hidden_size)``: what speculative recording ranks when it applies a layer's
        router to another layer's router input.

        ``router`` is the router module or the engine's nnsight envoy of it (calling the envoy
        inside a traced forward runs the module without disturbing the trace). Default: the
        router's own forward, through ``unpack``. A family whose forward does much more than the
        projection (group-limited selection) may override this with the projection alone, which
        must give exactly the forward's logits.
        """
        return self.unpack(router(hidden))[0]

    def rank_experts(self, logits: torch.Tensor, router: nn.Module, m: int) -> torch.Tensor:
        """The router's top-``m`` experts ``(tokens, m)`` for these logits, in rank order, for any
        ``1 <= m <= E`` (speculative recording asks for m = 2k by default).

        Default: top-``m`` of ``selection_scores``, so its first k are exactly the router's choice.
        Families whose selection leaves fewer than E candidates (group-limited routing) override
        it to rank the candidates first and then the excluded experts by score
        (`ranked_within_then_rest`), so every slot names a distinct expert.
        """
        return torch.topk(self.selection_scores(logits, router), m, dim=-1, sorted=True).indices

    def rank_order(
        self, logits: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, router: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reorder a router's ``(weights, indices)`` output into rank order (no-op when sorted)."""
        if self.output_sorted:
            return weights, indices
        key = self.selection_scores(logits, router).gather(-1, indices)
        order = torch.argsort(key, dim=-1, descending=True, stable=True)
        return weights.gather(-1, order), indices.gather(-1, order)

    def full_probs(self, logits: torch.Tensor, router: nn.Module) -> torch.Tensor:
        """Softmax over all E router logits, float32 (see ``probs_kind``)."""
        return torch.softmax(logits.float(), dim=-1)


class SoftmaxTopKAdapter(MoEAdapter):
    """softmax over E -> top-k -> optional renormalization (OLMoE, Mixtral, Qwen-MoE)."""

    routing = "softmax over E, top-k, renormalized if norm_topk_prob"
    weights_doc = (
        "softmax probabilities of the top-k experts, renormalized to sum 1 if norm_topk_prob"
    )

    def selection_scores(
        self, logits: torch.Tensor, router: nn.Module, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return remove_experts(torch.softmax(logits.float(), dim=-1), mask)

    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        weights = torch.softmax(logits.float(), dim=-1).gather(-1, indices)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights


class TopKLogitsAdapter(MoEAdapter):
    """top-k on the raw logits; a subclass says how the k gate weights follow (``gate_weights``):
    softmax over the k (`TopKSoftmaxAdapter`), sigmoid of each (Llama-4), per-rank sparsemixer
    softmax (PhiMoE)."""

    def selection_scores(
        self, logits: torch.Tensor, router: nn.Module, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return remove_experts(logits, mask)


class TopKSoftmaxAdapter(TopKLogitsAdapter):
    """top-k on raw logits -> softmax over the k chosen logits (GPT-OSS, GraniteMoE)."""

    routing = "top-k on raw logits, softmax over the k"
    weights_doc = "softmax over the k selected raw logits (they sum to 1)"

    @property
    def norm_topk_prob(self) -> bool:
        return True

    def gate_weights(
        self,
        logits: torch.Tensor,
        indices: torch.Tensor,
        router: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return torch.softmax(logits.gather(-1, indices), dim=-1)


class GroupLimitedAdapter(MoEAdapter):
    """The DeepSeek layout and group-limited selection (DeepSeek-V2 and -V3, GLM-4.5 MoE).

    Layers below ``first_k_dense_replace`` are dense; ``n_shared_experts`` always-on experts; the
    router ``mlp.gate`` over ``n_routed_experts`` returns its top-k unsorted. With group-limited
    routing the E experts form ``n_group`` equal groups and top-k chooses only among the
    ``topk_group`` groups whose ``group_score`` is highest (`kept_groups`). A subclass implements
    ``group_score``, ``selection_scores`` and ``gate_weights``.
    """

    router_attr = "mlp.gate"
    experts_attr = "n_routed_experts"
    output_sorted = False

    def is_moe_layer(self, layer: int) -> bool:
        return int(self.config.first_k_dense_replace) <= layer < self.num_layers

    @property
    def num_shared_experts(self) -> int:
        return int(self.config.n_shared_experts or 0)

    @abstractmethod
    def group_score(self, grouped: torch.Tensor) -> torch.Tensor:
        """``(tokens, n_group)`` scores of the groups from ``(tokens, n_group, E / n_group)``."""

    def kept_groups(self, scores: torch.Tensor) -> torch.Tensor:
        """bool (tokens, E): the experts of the ``topk_group`` groups with the highest
        ``group_score`` (the only ones the router may choose)."""
        n_group = int(self.config.n_group)
        grouped = scores.view(-1, n_group, self.num_experts // n_group)
        group_scores = self.group_score(grouped)
        keep = torch.topk(group_scores, k=int(self.config.topk_group), dim=-1).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        return group_mask.unsqueeze(-1).expand_as(grouped).reshape_as(scores)

    def rank_within_groups(self, scores: torch.Tensor, m: int) -> torch.Tensor:
        """Top-``m`` by ``scores`` within the kept groups (the router's own selection), then,
        past the ``topk_group * E / n_group`` candidates, the other experts by the same score."""
        candidates = int(self.config.topk_group) * (self.num_experts // int(self.config.n_group))
        return ranked_within_then_rest(scores, self.kept_groups(scores), m, candidates)

    def router_logits(self, router: Any, hidden: torch.Tensor) -> torch.Tensor:
        """The router's float32 projection alone, without its group selection (the same logits
        its forward computes)."""
        weight: torch.Tensor = router.weight
        return F.linear(hidden.float(), weight.float())
