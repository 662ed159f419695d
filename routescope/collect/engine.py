"""The collection engine: run a batch of token sequences through an MoE model and record its routing.

Every forward is an nnsight trace over the wrapped HF model that reads each router module's
``.output`` (``(logits, weights, indices)`` over the flattened ``batch*seq`` tokens). Sequences are
left-padded with explicit position ids, so pads are never recorded and positions count only real
tokens. With ``max_new_tokens > 0`` the engine decodes greedily (or samples) with a KV cache, one
traced forward per step; every generated token is fed back through the model, so each one has its
routing recorded (phase 1). A sequence stops after it emits EOS. All recorded tensors stay on the
device until the batch is done and are moved to the host once per batch.

The KV cache goes in and comes out under the name the model's forward uses (``cache`` from
transformers 5.24, ``past_key_values`` before; see ``routescope.models.compat``), so no deprecation
shim (and its per-step FutureWarning) is involved; a cache the model did not update in place, i.e.
a keyword it silently ignored, is an error rather than wrong routing.

``steering`` (optional) is a ``RouterEdit``: called inside the trace for every MoE layer with the
router's output; if it returns new ``(weights, indices)`` the model uses them, and the recorded
routing is the edited one.

``speculative = D`` (optional) also records speculative-gate rankings (DESIGN §9): for every MoE
layer l and d = 1..D, layer l's router applied to the router input of decoder layer l - d for the
same token (for a dense layer l - d, the input of its MLP: the same post-attention-norm hidden
state), ranked by the adapter's ``rank_experts`` (the family's own selection rule, top-m, m = 2k
by default); -1 where l - d < 0. The trace reads each such input with ``.input`` as the forward
reaches it and, right there, calls the later routers on it ad hoc (nnsight stands the trace down
for the call, so the routers' real visits are untouched); only the int rankings are kept, and
they leave the device with the rest of the batch. Under steering the ranking is the router's own,
unsteered ranking of that input (the input itself comes from the steered forward).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from routescope.core.errors import InvalidParameterError, RoutescopeError
from routescope.core.records import BatchRouting
from routescope.models.compat import cache_kwarg, output_cache
from routescope.models.loading import LoadedModel

__all__ = ["GENERATION_OPTIONS", "RouterEdit", "check_speculative", "collect_batch"]

GENERATION_OPTIONS = ("do_sample", "temperature", "top_k", "top_p", "eos_token_id", "seed")


class RouterEdit(Protocol):
    """An intervention on one router's decision, applied inside the traced forward.

    Called with the router's raw ``logits`` ``(tokens, E)`` and its ``weights``/``indices``
    ``(tokens, k)`` for MoE layer ``layer``; returns replacement ``(weights, indices)`` (the family's
    routing can be recomputed with ``lm.adapter.route(logits, router, mask=..., force=...)``), or
    None to leave the layer unchanged.
    """

    def __call__(
        self,
        lm: LoadedModel,
        layer: int,
        logits: torch.Tensor,
        weights: torch.Tensor,
        indices: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor] | None: ...


def _check_inputs(lm: LoadedModel, input_ids: list[list[int]], max_new_tokens: int) -> None:
    if not input_ids:
        raise InvalidParameterError("collect_batch got an empty batch: pass at least one sequence")
    vocab = int(lm.model.config.vocab_size)
    for b, seq in enumerate(input_ids):
        if len(seq) == 0:
            raise InvalidParameterError(f"sequence {b} of the batch is empty: drop empty prompts")
        lo, hi = min(seq), max(seq)
        if lo < 0 or hi >= vocab:
            raise InvalidParameterError(
                f"sequence {b} has token id {lo if lo < 0 else hi} outside the model's vocabulary "
                f"(0..{vocab - 1}): tokenize with this model's tokenizer"
            )
    if max_new_tokens < 0:
        raise InvalidParameterError(f"max_new_tokens must be >= 0, got {max_new_tokens}")


def _generation_options(lm: LoadedModel, generation: dict | None) -> dict[str, Any]:
    opts = dict(generation or {})
    unknown = sorted(set(opts) - set(GENERATION_OPTIONS))
    if unknown:
        raise InvalidParameterError(
            f"unknown generation option(s) {', '.join(unknown)}: "
            f"supported are {', '.join(GENERATION_OPTIONS)}"
        )
    gen_cfg = getattr(lm.model, "generation_config", None)
    eos = opts.get("eos_token_id", getattr(gen_cfg, "eos_token_id", None))
    if eos is None:
        eos = lm.model.config.eos_token_id
    if eos is None:
        eos = []
    opts["eos_token_id"] = [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]
    return opts


def _next_tokens(
    logits: torch.Tensor, opts: dict[str, Any], generator: torch.Generator | None
) -> torch.Tensor:
    """Greedy argmax, or a sample under temperature / top-k / top-p when ``do_sample``."""
    logits = logits.float()
    if not opts.get("do_sample", False):
        return logits.argmax(dim=-1)
    temperature = float(opts.get("temperature", 1.0))
    if temperature <= 0:
        raise InvalidParameterError(f"temperature must be > 0, got {temperature}")
    logits = logits / temperature
    top_k = opts.get("top_k")
    if top_k:
        kth = torch.topk(logits, min(int(top_k), logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    top_p = opts.get("top_p")
    if top_p is not None and float(top_p) < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= float(top_p)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_speculative(lm: LoadedModel, distances: int, width: int | None) -> int:
    """Check speculative recording's distance D and width m against ``lm``; returns m (``width``
    if given, else min(2k, E)). One clear `InvalidParameterError` when either is out of range."""
    n_layers = lm.num_layers
    if isinstance(distances, bool) or not isinstance(distances, int) or distances < 1:
        raise InvalidParameterError(f"speculative distance D must be >= 1, got {distances!r}")
    if distances >= n_layers:
        raise InvalidParameterError(
            f"speculative distance D={distances} is too large for this {n_layers}-layer model "
            f"(d counts decoder layers: at most {n_layers - 1})"
        )
    if width is None:
        return min(2 * lm.top_k, lm.num_experts)
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= lm.num_experts:
        raise InvalidParameterError(
            f"speculative width m must be 1..{lm.num_experts} (the model's routed experts per "
            f"layer), got {width!r}"
        )
    return width


class _Speculative:
    """Speculative-gate recording for one collect_batch call (see the module docstring).

    ``sources`` maps a decoder layer j to the envoy whose input is j's router input, for every j
    some MoE layer l = j + d (1 <= d <= D) reads; ``feed(j, x)`` ranks those later routers on it.
    """

    def __init__(self, lm: LoadedModel, distances: int, width: int | None) -> None:
        adapter = lm.adapter
        self.width = check_speculative(lm, distances, width)
        self.lm, self.distances = lm, distances
        layers = lm.moe_layers
        self.router_envoys = lm.router_envoys
        self.routers = lm.router_modules()
        self.devices = [next(r.parameters()).device for r in self.routers]
        #: decoder layer j -> [(column of MoE layer l = j + d, d)]
        self.targets: dict[int, list[tuple[int, int]]] = {}
        for col, layer in enumerate(layers):
            for d in range(1, distances + 1):
                if layer - d >= 0:
                    self.targets.setdefault(layer - d, []).append((col, d))
        wrapper = lm.nnsight
        self.sources = {j: wrapper.get(adapter.router_input_path(j)) for j in self.targets}
        self.parts: list[tuple[int, int, torch.Tensor]] = []

    def feed(self, layer: int, hidden: torch.Tensor) -> None:
        """Rank every MoE layer l = layer + d by its router applied to ``hidden``, layer's router
        input (flattened to (tokens, hidden) as the routers see it)."""
        adapter = self.lm.adapter
        x = hidden.reshape(-1, hidden.shape[-1])
        for col, d in self.targets[layer]:
            logits = adapter.router_logits(self.router_envoys[col], x.to(self.devices[col]))
            ranking = adapter.rank_experts(logits, self.routers[col], self.width)
            self.parts.append((col, d, ranking))

    def take(self, shape: torch.Size) -> torch.Tensor:
        """int16 (batch, seq, L, D, m) of the forward just traced on input ids of ``shape``
        (batch, seq); -1 where l - d < 0. Resets for the next forward."""
        device = self.lm.model.device
        out = torch.full(
            (shape[0] * shape[1], len(self.routers), self.distances, self.width),
            -1,
            dtype=torch.int16,
            device=device,
        )
        for col, d, ranking in self.parts:
            out[:, col, d - 1] = ranking.to(device=device, dtype=torch.int16)
        self.parts = []
        return out.reshape(shape[0], shape[1], *out.shape[1:])


_Routing = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _layer_routing(
    lm: LoadedModel, layer: int, envoy: Any, steering: RouterEdit | None
) -> _Routing:
    """Inside a trace: the router output of MoE layer ``layer`` (its nnsight ``envoy``) as
    ``(logits, weights, indices)``, after ``steering``'s edit, which replaces the router's output
    in the forward."""
    out = envoy.output
    routing = lm.adapter.unpack(out)
    if steering is not None:
        edited = steering(lm, layer, *routing)
        if edited is not None:
            envoy.output = lm.adapter.pack(out, edited[0], edited[1])
            routing = (routing[0], edited[0].to(routing[1].dtype), edited[1])
    return routing


def _traced_forward(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
    use_cache: bool,
    steering: RouterEdit | None,
    cache_name: str,
    spec: _Speculative | None = None,
) -> tuple[list[_Routing], Any]:
    """One traced forward; returns each MoE layer's router output and the model output.

    ``cache`` (if not None) is passed as keyword ``cache_name`` (see ``compat.cache_kwarg``).
    ``spec``: speculative recording, fed each router input it needs as the forward reaches it.
    """
    wrapper = lm.nnsight
    envoys = lm.router_envoys
    layers = lm.moe_layers
    captured: list[_Routing] = []
    kwargs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "use_cache": use_cache,
        "logits_to_keep": 1,
    }
    if cache is not None:
        kwargs[cache_name] = cache
    if spec is not None:
        return _traced_forward_speculative(lm, kwargs, steering, spec)
    with wrapper.trace(**kwargs):
        for layer, envoy in zip(layers, envoys, strict=True):
            captured.append(_layer_routing(lm, layer, envoy, steering))
        model_out = wrapper.output.save()
    return captured, model_out


def _traced_forward_speculative(
    lm: LoadedModel, kwargs: dict[str, Any], steering: RouterEdit | None, spec: _Speculative
) -> tuple[list[_Routing], Any]:
    """``_traced_forward`` that also feeds ``spec`` the router inputs it needs, in layer order
    (a layer's router input comes before its router output)."""
    wrapper = lm.nnsight
    routers = dict(zip(lm.moe_layers, lm.router_envoys, strict=True))
    sources = spec.sources
    captured: list[_Routing] = []
    with wrapper.trace(**kwargs):
        for layer in range(lm.num_layers):
            if layer in sources:
                spec.feed(layer, sources[layer].input)
            if layer not in routers:
                continue
            envoy = routers[layer]
            captured.append(_layer_routing(lm, layer, envoy, steering))
        model_out = wrapper.output.save()
    return captured, model_out


def _returned_cache(out: Any, passed: Any, cache_name: str, lm: LoadedModel) -> Any:
    """The KV cache in ``out``; if ``passed`` is not None the model must have updated that very
    object (transformers caches are updated in place), else it ignored keyword ``cache_name``."""
    cache = output_cache(out)
    if cache is None:
        raise RoutescopeError(
            f"{lm.model_id}: the forward returned no KV cache although use_cache=True; "
            "routescope cannot decode with this model"
        )
    if passed is not None and cache is not passed:
        import transformers

        raise RoutescopeError(
            f"{lm.model_id}: the forward did not use the KV cache passed as {cache_name}= "
            f"(transformers {transformers.__version__}); routescope cannot decode with this model"
        )
    return cache


def _stack_step(
    lm: LoadedModel,
    captured: list[_Routing],
    batch: int,
    save_probs: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Router outputs of one forward -> experts (B,T,L,k), weights (B,T,L,k), probs (B,T,L,E)."""
    adapter = lm.adapter
    routers = lm.router_modules()
    device = lm.model.device  # layers may sit on several devices (device_map): gather on one
    ws, idxs, probs = [], [], []
    for (logits, weights, indices), router in zip(captured, routers, strict=True):
        weights, indices = adapter.rank_order(logits, weights, indices, router)
        ws.append(weights.float().to(device))
        idxs.append(indices.to(device))
        if save_probs:
            probs.append(adapter.full_probs(logits, router).to(device))
    weights = torch.stack(ws, dim=1)
    experts = torch.stack(idxs, dim=1).to(torch.int16)
    shape = (batch, -1, *weights.shape[1:])
    full = None
    if save_probs:
        stacked = torch.stack(probs, dim=1)
        full = stacked.reshape(batch, -1, *stacked.shape[1:])
    return experts.reshape(shape), weights.reshape(shape), full


@torch.no_grad()
def collect_batch(
    lm: LoadedModel,
    input_ids: list[list[int]],
    max_new_tokens: int = 0,
    save_probs: bool = False,
    steering: RouterEdit | None = None,
    generation: dict | None = None,
    speculative: int = 0,
    speculative_width: int | None = None,
) -> BatchRouting:
    """Record the routing of a batch of token sequences (and of up to ``max_new_tokens`` generated
    tokens per sequence) at every MoE layer of ``lm``.

    ``generation``: ``do_sample`` (default greedy), ``temperature``, ``top_k``, ``top_p``, ``seed``,
    ``eos_token_id`` (defaults to the model's). Rows come out grouped by sequence in input order.
    ``speculative = D > 0`` also records, per token, MoE layer l and d = 1..D, the top-m ranking
    of layer l's router applied to layer l - d's router input (``BatchRouting.speculative``; m =
    ``speculative_width``, default min(2k, E)); under ``steering`` it is the router's own,
    unsteered ranking of that input.
    """
    _check_inputs(lm, input_ids, max_new_tokens)
    opts = _generation_options(lm, generation)
    spec = None
    if speculative:
        spec = _Speculative(lm, speculative, speculative_width)
    elif speculative_width is not None:
        raise InvalidParameterError("speculative_width needs speculative = D >= 1")
    device = lm.model.device
    batch = len(input_ids)
    lengths = torch.tensor([len(s) for s in input_ids])
    width = int(lengths.max())
    pad = lm.pad_token_id

    ids = torch.full((batch, width), pad, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for b, seq in enumerate(input_ids):
        ids[b, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[b, width - len(seq) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)

    generating = max_new_tokens > 0
    cache_name = cache_kwarg(lm.model)
    captured, out = _traced_forward(
        lm, ids, mask, positions, None, generating, steering, cache_name, spec
    )
    spec_parts: list[torch.Tensor] = []
    if spec is not None:
        spec_parts.append(spec.take(ids.shape))
    experts_parts: list[torch.Tensor] = []
    weights_parts: list[torch.Tensor] = []
    probs_parts: list[torch.Tensor] = []
    e, w, p = _stack_step(lm, captured, batch, save_probs)
    experts_parts.append(e)
    weights_parts.append(w)
    if p is not None:
        probs_parts.append(p)
    token_parts = [ids]
    record_parts = [mask.bool()]

    if generating:
        generator = None
        if opts.get("seed") is not None:
            generator = torch.Generator(device=device).manual_seed(int(opts["seed"]))
        eos = torch.tensor(opts["eos_token_id"], dtype=torch.long, device=device)
        alive = torch.ones(batch, dtype=torch.bool, device=device)
        last_pos = positions[:, -1:]
        cache = _returned_cache(out, None, cache_name, lm)
        for _ in range(max_new_tokens):
            nxt = _next_tokens(out.logits[:, -1, :], opts, generator)
            nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
            token_parts.append(nxt[:, None])
            record_parts.append(alive[:, None].clone())
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], 1)
            last_pos = last_pos + 1
            captured, out = _traced_forward(
                lm, nxt[:, None], mask, last_pos, cache, True, steering, cache_name, spec
            )
            cache = _returned_cache(out, cache, cache_name, lm)
            if spec is not None:
                spec_parts.append(spec.take(nxt[:, None].shape))
            e, w, p = _stack_step(lm, captured, batch, save_probs)
            experts_parts.append(e)
            weights_parts.append(w)
            if p is not None:
                probs_parts.append(p)
            if eos.numel():
                alive = alive & ~torch.isin(nxt, eos)
            if not bool(alive.any()):
                break

    record = torch.cat(record_parts, dim=1)  # (B, T_total) bool
    tokens = torch.cat(token_parts, dim=1)
    phase = torch.zeros_like(tokens, dtype=torch.uint8)
    phase[:, width:] = 1
    pos = record.long().cumsum(dim=1) - 1
    experts = torch.cat(experts_parts, dim=1)[record]
    weights = torch.cat(weights_parts, dim=1)[record]
    probs = torch.cat(probs_parts, dim=1)[record] if save_probs else None
    spec_rows = torch.cat(spec_parts, dim=1)[record] if spec is not None else None
    counts = record.sum(dim=1)

    # one host transfer per array for the whole batch
    seq_offsets = np.zeros(batch + 1, dtype=np.int64)
    seq_offsets[1:] = np.cumsum(counts.cpu().numpy())
    return BatchRouting(
        seq_offsets=seq_offsets,
        token_ids=tokens[record].cpu().numpy().astype(np.int64),
        positions=pos[record].cpu().numpy().astype(np.int32),
        phase=phase[record].cpu().numpy(),
        experts=experts.cpu().numpy(),
        weights=weights.cpu().numpy(),
        probs=None if probs is None else probs.cpu().numpy().astype(np.float32),
        speculative=None if spec_rows is None else spec_rows.cpu().numpy(),
    )
