"""Every supported family: the engine's recorded routing equals an independent capture.

The reference is a plain forward of each sequence alone (no padding, no nnsight) with ordinary torch
forward hooks on the router modules, whose paths are written below independently of the
adapters; its top-k pairs are put in rank order by the family's selection score computed here.

A family's whole test entry is one `Tiny` row in `TINY` (config, MoE layers, router path, shared
experts, rank key, what full_probs is, the router's output form); every test below runs on every
row, and `test_every_registered_family_has_a_tiny_config` fails when a registered family has no row.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version

from routescope.collect.engine import collect_batch
from routescope.core.errors import InvalidParameterError, RoutescopeError, UnsupportedModelError
from routescope.models import LoadedModel, ModelLoadError, load_model
from routescope.models.adapters import registered_adapters, supported_families
from routescope.models.compat import cache_kwarg, output_cache

# ---- tiny models of every family ---------------------------------------------------------

VOCAB = 96
PAD, BOS, EOS = 0, 1, 2

_COMMON: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "pad_token_id": PAD,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "tie_word_embeddings": False,
}


@dataclass(frozen=True)
class Tiny:
    """One family's test entry, written independently of its adapter: a tiny config and what the
    family's transformers modeling code does with it."""

    #: overrides of ``_COMMON`` for ``AutoConfig.for_model(family, ...)``
    config: dict[str, Any]
    #: the decoder layers that have a router under this config
    moe_layers: list[int]
    #: the router module's path inside a decoder layer
    router_attr: str
    #: always-on experts per MoE layer
    shared_experts: int = 0
    #: what the router ranks its top-k by: the raw "logits" (softmax, top-k-then-softmax and
    #: sparsemixer all rank by the logit) or "sigmoid+bias" (DeepSeek-V3's selection-only bias)
    rank_key: str = "logits"
    #: what full_probs holds: "softmax" over E or independent "sigmoid" scores
    probs: str = "softmax"
    #: the router's output: "logits,weights,indices" or "scores,logits" (Llama-4: sigmoid of the
    #: chosen logits scattered over E, then the logits)
    router_output: str = "logits,weights,indices"


#: family -> its tiny-config test entry; adding a family = one row here (plus its adapter module)
TINY: dict[str, Tiny] = {
    "olmoe": Tiny(
        {"num_experts": 8, "num_experts_per_tok": 2},
        [0, 1, 2],
        router_attr="mlp.gate",
    ),
    "mixtral": Tiny(
        {"num_local_experts": 6, "num_experts_per_tok": 2},
        [0, 1, 2],
        router_attr="mlp.gate",
    ),
    "qwen2_moe": Tiny(
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "shared_expert_intermediate_size": 32,
            "mlp_only_layers": [1],
            "norm_topk_prob": True,
        },
        [0, 2],
        router_attr="mlp.gate",
        shared_experts=1,
    ),
    "qwen3_moe": Tiny(
        {
            "num_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 16,
            "head_dim": 8,
            "decoder_sparse_step": 1,
        },
        [0, 1, 2],
        router_attr="mlp.gate",
    ),
    "deepseek_v2": Tiny(
        {
            "num_key_value_heads": 4,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "moe_intermediate_size": 16,
            "first_k_dense_replace": 1,
            "kv_lora_rank": 16,
            "q_lora_rank": None,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 8,
            "topk_method": "group_limited_greedy",
            "n_group": 4,
            "topk_group": 2,
            "routed_scaling_factor": 1.5,
        },
        [1, 2],
        router_attr="mlp.gate",
        shared_experts=1,
    ),
    "deepseek_v3": Tiny(
        {
            "num_key_value_heads": 4,
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "moe_intermediate_size": 16,
            "first_k_dense_replace": 1,
            "kv_lora_rank": 16,
            "q_lora_rank": 16,
            "qk_rope_head_dim": 8,
            "qk_nope_head_dim": 8,
            "v_head_dim": 8,
            "n_group": 4,
            "topk_group": 2,
            "norm_topk_prob": True,
            "routed_scaling_factor": 2.5,
        },
        [1, 2],
        router_attr="mlp.gate",
        shared_experts=1,
        rank_key="sigmoid+bias",
        probs="sigmoid",
    ),
    "gpt_oss": Tiny(
        {"num_local_experts": 8, "num_experts_per_tok": 2, "head_dim": 8, "sliding_window": 4},
        [0, 1, 2],
        router_attr="mlp.router",
    ),
    "granitemoe": Tiny(
        {"num_local_experts": 6, "num_experts_per_tok": 2},
        [0, 1, 2],
        router_attr="block_sparse_moe.router",
    ),
    "phimoe": Tiny(
        {"num_local_experts": 4, "num_experts_per_tok": 2},
        [0, 1, 2],
        router_attr="mlp.router",
    ),
    "glm4_moe": Tiny(
        {
            "n_routed_experts": 8,
            "num_experts_per_tok": 2,
            "n_shared_experts": 1,
            "moe_intermediate_size": 16,
            "first_k_dense_replace": 1,
            "head_dim": 8,
            "n_group": 2,
            "topk_group": 1,
            "routed_scaling_factor": 1.5,
        },
        [1, 2],
        router_attr="mlp.gate",
        shared_experts=1,
        rank_key="sigmoid+bias",
        probs="sigmoid",
    ),
    "granitemoeshared": Tiny(
        {"num_local_experts": 6, "num_experts_per_tok": 2, "shared_intermediate_size": 16},
        [0, 1, 2],
        router_attr="block_sparse_moe.router",
        shared_experts=1,
    ),
    "flex_olmo": Tiny(
        {"num_experts": 8, "num_experts_per_tok": 2},
        [0, 1, 2],
        router_attr="mlp.gate",
    ),
    "jamba": Tiny(
        {
            "num_experts": 6,
            "num_experts_per_tok": 2,
            "expert_layer_period": 2,
            "expert_layer_offset": 0,
            "attn_layer_period": 2,
            "attn_layer_offset": 1,
            "mamba_d_state": 8,
            "mamba_d_conv": 4,
            "mamba_expand": 2,
            "mamba_dt_rank": 4,
            "use_mamba_kernels": False,
        },
        [0, 2],
        router_attr="feed_forward.router",
    ),
    "llama4_text": Tiny(
        {
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "intermediate_size": 32,
            "intermediate_size_mlp": 64,
            "head_dim": 8,
            "moe_layers": [0, 2],
            "attention_chunk_size": 16,
        },
        [0, 2],
        router_attr="feed_forward.router",
        shared_experts=1,
        probs="sigmoid",
        router_output="scores,logits",
    ),
}

#: the pre-`Tiny` view (config overrides, MoE layers) other test modules import
TINY_CONFIGS: dict[str, tuple[dict[str, Any], list[int]]] = {
    family: (t.config, t.moe_layers) for family, t in TINY.items()
}
FAMILIES = list(TINY)


def build_tiny(family: str, seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in eval mode (deterministic for a seed)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny = TINY[family]
    kwargs = {**_COMMON, **tiny.config, **overrides}
    cfg = AutoConfig.for_model(family, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        # randomize router parameters (some families initialise them to zero) and DeepSeek-V3's
        # selection bias, so routing is non-trivial and the bias matters
        for name, param in model.named_parameters():
            if f".{tiny.router_attr}." in name:
                param.normal_(0.0, 1.0)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.3)
    return model


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


PROMPTS = [
    [BOS, 17, 33, 5, 60, 71, 8, 44, 90],
    [BOS, 25, 9],
    [BOS, 50, 51, 52, 53, 3],
]


@dataclass
class Reference:
    experts: np.ndarray  # (T, L, k) rank order
    weights: np.ndarray  # (T, L, k)
    logits: np.ndarray  # (T, L, E) raw router logits
    lm_logits: np.ndarray  # (T, V)


def reference_capture(model: torch.nn.Module, family: str, seq: list[int]) -> Reference:
    """Run ``seq`` alone through the plain HF model, capturing router outputs with torch hooks."""
    return reference_capture_layers(model, family, seq, TINY[family].moe_layers)


def reference_capture_layers(
    model: torch.nn.Module, family: str, seq: list[int], layers: list[int]
) -> Reference:
    """``reference_capture`` over the given MoE ``layers``."""
    tiny = TINY[family]
    captured: dict[int, tuple] = {}
    handles = []
    for layer in layers:
        module = model.get_submodule(f"model.layers.{layer}.{tiny.router_attr}")

        def hook(mod, args, out, layer=layer):
            if tiny.router_output == "scores,logits":  # scores: sigmoid of chosen logits else 0
                scores, logits = out
                chosen = scores != 0
                assert (chosen.sum(1) == mod.top_k).all()
                idx = torch.nonzero(chosen)[:, 1].view(-1, mod.top_k)
                out = (logits, scores.gather(1, idx), idx)
            captured[layer] = (mod, out[0].detach(), out[1].detach(), out[2].detach())

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            lm_logits = model(torch.tensor([seq])).logits[0]
    finally:
        for h in handles:
            h.remove()
    experts, weights, logits = [], [], []
    for layer in layers:
        mod, lg, w, idx = captured[layer]
        lg = lg.float()
        if tiny.rank_key == "sigmoid+bias":
            key = torch.sigmoid(lg) + mod.e_score_correction_bias.float()
        else:  # softmax, top-k-then-softmax and sparsemixer all rank by the raw logit
            key = lg
        order = torch.argsort(key.gather(1, idx), dim=1, descending=True)
        experts.append(idx.gather(1, order))
        weights.append(w.float().gather(1, order))
        logits.append(lg)
    return Reference(
        experts=torch.stack(experts, 1).numpy(),
        weights=torch.stack(weights, 1).numpy(),
        logits=torch.stack(logits, 1).numpy(),
        lm_logits=lm_logits.float().numpy(),
    )


@pytest.fixture(scope="module")
def tiny(family: str) -> tuple[str, torch.nn.Module, LoadedModel]:
    model = build_tiny(family)
    return family, model, LoadedModel.from_model(model, model_id=f"tiny-{family}")


def check_rows_match(rec, b: int, ref: Reference, n: int) -> None:
    """Rows of sequence ``b`` in ``rec`` equal the first ``n`` reference tokens exactly."""
    rows = rec.sequence(b)
    assert rows.stop - rows.start == n
    np.testing.assert_array_equal(rec.experts[rows].astype(np.int64), ref.experts[:n])
    np.testing.assert_allclose(rec.weights[rows], ref.weights[:n], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(rec.positions[rows], np.arange(n))


def test_layout_and_metadata(tiny) -> None:
    family, model, lm = tiny
    assert family in supported_families()
    assert lm.family == family
    assert lm.moe_layers == TINY[family].moe_layers
    assert lm.num_layers == 3
    assert lm.top_k == 2
    layer = lm.moe_layers[0]
    router = model.get_submodule(f"model.layers.{layer}.{TINY[family].router_attr}")
    assert lm.num_experts == router.num_experts
    assert lm.router_modules()[0] is router
    assert lm.num_shared_experts == TINY[family].shared_experts
    assert lm.shape.moe_layers == tuple(TINY[family].moe_layers)
    assert (lm.shape.num_experts, lm.shape.top_k) == (router.num_experts, 2)


def test_route_function_reproduces_router(tiny) -> None:
    """adapter.route on the raw logits gives the router's own choice and weights, in rank order."""
    family, model, lm = tiny
    ref = reference_capture(model, family, PROMPTS[0])
    for j, router in enumerate(lm.router_modules()):
        weights, indices = lm.adapter.route(torch.from_numpy(ref.logits[:, j]), router)
        np.testing.assert_array_equal(indices.numpy(), ref.experts[:, j])
        np.testing.assert_allclose(weights.float().numpy(), ref.weights[:, j], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", [[0], [0, 1, 2]], ids=["single", "mixed-lengths"])
def test_prefill_matches_independent_capture(tiny, which: list[int]) -> None:
    family, model, lm = tiny
    seqs = [PROMPTS[i] for i in which]
    rec = collect_batch(lm, seqs)
    n_layers, k = len(TINY[family].moe_layers), 2
    assert rec.experts.shape == (sum(map(len, seqs)), n_layers, k)
    assert rec.experts.dtype == np.int16 and rec.weights.dtype == np.float32
    assert rec.probs is None
    assert not rec.phase.any()
    for b, seq in enumerate(seqs):
        ref = reference_capture(model, family, seq)
        check_rows_match(rec, b, ref, len(seq))
        np.testing.assert_array_equal(rec.token_ids[rec.sequence(b)], seq)


@pytest.mark.filterwarnings("error::FutureWarning")  # e.g. transformers' cache-keyword rename
@pytest.mark.parametrize(
    "which", [[0], [1], [0, 1, 2]], ids=["batch1-long", "batch1-short", "batch3-mixed-lengths"]
)
def test_generation_matches_forward_over_generated_sequence(tiny, which: list[int]) -> None:
    """Decode routing (KV cache, one traced step per token) equals a plain forward of the whole
    generated sequence, alone (batch of 1: no padding) and in a left-padded batch."""
    family, model, lm = tiny
    new = 3
    prompts = [PROMPTS[i] for i in which]
    rec = collect_batch(lm, prompts, max_new_tokens=new, generation={"eos_token_id": []})
    assert len(rec.seq_offsets) == len(prompts) + 1
    for b, prompt in enumerate(prompts):
        rows = rec.sequence(b)
        tokens = rec.token_ids[rows].tolist()
        assert tokens[: len(prompt)] == prompt
        assert len(tokens) == len(prompt) + new  # every generated token has routing
        np.testing.assert_array_equal(rec.phase[rows], [0] * len(prompt) + [1] * new)
        ref = reference_capture(model, family, tokens)
        check_rows_match(rec, b, ref, len(tokens))
        # greedy: each generated token is the argmax of the full forward at the previous position
        greedy = ref.lm_logits[len(prompt) - 1 : -1].argmax(-1)
        assert tokens[len(prompt) :] == greedy.tolist()


def test_full_probs(tiny) -> None:
    family, model, lm = tiny
    rec = collect_batch(lm, PROMPTS[:2], save_probs=True)
    assert rec.probs is not None
    assert rec.probs.shape == (rec.num_tokens, len(lm.moe_layers), lm.num_experts)
    ref = reference_capture(model, family, PROMPTS[1])
    probs = rec.probs[rec.sequence(1)]
    if TINY[family].probs == "sigmoid":  # documented: sigmoid scores
        expected = 1.0 / (1.0 + np.exp(-ref.logits))
    else:
        z = np.exp(ref.logits - ref.logits.max(-1, keepdims=True))
        expected = z / z.sum(-1, keepdims=True)
        np.testing.assert_allclose(rec.probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)


def test_eos_stops_a_sequence() -> None:
    model = build_tiny("olmoe", seed=3)
    lm = LoadedModel.from_model(model)
    free = collect_batch(lm, PROMPTS[:2], max_new_tokens=4, generation={"eos_token_id": []})
    first_gen = int(free.token_ids[free.sequence(0)][len(PROMPTS[0])])
    rec = collect_batch(lm, PROMPTS[:2], max_new_tokens=4, generation={"eos_token_id": first_gen})
    seq0 = rec.token_ids[rec.sequence(0)].tolist()
    assert seq0 == PROMPTS[0] + [first_gen]  # EOS recorded, nothing after it
    seq1_free = free.token_ids[free.sequence(1)].tolist()
    gen1 = seq1_free[len(PROMPTS[1]) :]
    expected1 = PROMPTS[1] + (gen1[: gen1.index(first_gen) + 1] if first_gen in gen1 else gen1)
    assert rec.token_ids[rec.sequence(1)].tolist() == expected1
    ref = reference_capture(model, "olmoe", seq0)
    check_rows_match(rec, 0, ref, len(seq0))


def test_sampling_is_seeded() -> None:
    lm = LoadedModel.from_model(build_tiny("mixtral"))
    opts = {"do_sample": True, "temperature": 1.5, "top_k": 20, "top_p": 0.9, "seed": 7}
    a = collect_batch(lm, PROMPTS[:2], max_new_tokens=4, generation=opts)
    b = collect_batch(lm, PROMPTS[:2], max_new_tokens=4, generation=opts)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_array_equal(a.experts, b.experts)
    with pytest.raises(InvalidParameterError, match="num_beams"):
        collect_batch(lm, PROMPTS[:1], max_new_tokens=1, generation={"num_beams": 2})


@pytest.mark.parametrize("family_name", ["olmoe", "deepseek_v3", "phimoe", "llama4_text"])
def test_router_edit_hook_reroutes(family_name: str) -> None:
    """A RouterEdit masking one expert: that expert never appears and the model used the edit."""
    model = build_tiny(family_name)
    lm = LoadedModel.from_model(model)
    layer = lm.moe_layers[-1]
    base = collect_batch(lm, PROMPTS)
    j = lm.moe_layers.index(layer)
    banned = int(np.bincount(base.experts[:, j, 0]).argmax())  # a frequently chosen expert
    mask = torch.zeros(lm.num_experts, dtype=torch.bool)
    mask[banned] = True
    router = lm.router_modules()[j]

    def edit(lm_, at, logits, weights, indices):
        return lm_.adapter.route(logits, router, mask=mask) if at == layer else None

    rec = collect_batch(lm, PROMPTS, max_new_tokens=2, steering=edit)
    assert not (rec.experts[:, j] == banned).any()
    for b, prompt in enumerate(PROMPTS):  # layers before the edited one are untouched
        start = rec.seq_offsets[b]
        got = rec.experts[start : start + len(prompt), :j]
        np.testing.assert_array_equal(got, base.experts[base.sequence(b), :j])
    # the edit reached the model: the generated continuation is the plain forward of the edited model
    hooks = []

    def replace(mod, args, out):
        if TINY[family_name].router_output == "scores,logits":
            w, i = lm.adapter.route(out[1], mod, mask=mask)
            return torch.zeros_like(out[0]).scatter(1, i, w.to(out[0].dtype)), out[1]
        w, i = lm.adapter.route(out[0], mod, mask=mask)
        return out[0], w.to(out[1].dtype), i

    hooks.append(router.register_forward_hook(replace))
    try:
        seq = rec.token_ids[rec.sequence(0)].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0]
    finally:
        hooks[0].remove()
    assert seq[len(PROMPTS[0]) :] == logits[len(PROMPTS[0]) - 1 : -1].argmax(-1).tolist()


def test_route_force_puts_expert_first() -> None:
    lm = LoadedModel.from_model(build_tiny("qwen2_moe"))
    ref = reference_capture(lm.model, "qwen2_moe", PROMPTS[0])
    logits = torch.from_numpy(ref.logits[:, 0])
    force = torch.zeros(lm.num_experts, dtype=torch.bool)
    force[5] = True
    weights, indices = lm.adapter.route(logits, lm.router_modules()[0], force=force)
    assert (indices[:, 0] == 5).all()
    probs = torch.softmax(logits, -1)
    # the other slot is the best remaining expert; weights renormalized (norm_topk_prob=True)
    best_other = probs.masked_fill(force, -1).argmax(-1)
    assert torch.equal(indices[:, 1], best_other)
    np.testing.assert_allclose(weights.sum(-1).numpy(), 1.0, atol=1e-6)


def test_unsupported_and_dense_models_fail_clearly(tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    dense = AutoConfig.for_model(
        "llama",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
    )
    with pytest.raises(UnsupportedModelError) as err:
        LoadedModel.from_model(AutoModelForCausalLM.from_config(dense))
    msg = str(err.value)
    assert "llama" in msg and "olmoe" in msg and "routescope/models/adapters/" in msg
    assert "\n" not in msg
    all_dense = build_tiny("qwen3_moe", mlp_only_layers=[0, 1, 2]).config
    from routescope.models import adapter_for

    with pytest.raises(UnsupportedModelError, match="no MoE layers"):
        adapter_for(all_dense)
    rewired = build_tiny("olmoe")
    rewired.model.layers[1].mlp = torch.nn.Identity()  # layout not the transformers one
    with pytest.raises(UnsupportedModelError, match=r"model\.layers\.1\.mlp\.gate"):
        LoadedModel.from_model(rewired)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="not a model directory"):
        load_model(str(tmp_path / "notes.txt"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelLoadError, match="cannot load model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")  # offline: fails fast, one line
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_model(str(tmp_path), dtype="int3")


def test_load_model_from_saved_directory(tmp_path) -> None:
    model = build_tiny("granitemoe")
    model.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), dtype="float32")
    assert lm.family == "granitemoe" and lm.model_id == str(tmp_path)
    assert lm.dtype == "float32" and lm.device == "cpu" and lm.tokenizer is None
    assert not lm.model.training
    rec = collect_batch(lm, PROMPTS[:1])
    ref = reference_capture(model, "granitemoe", PROMPTS[0])
    check_rows_match(rec, 0, ref, len(PROMPTS[0]))


def test_bad_inputs_raise_one_line_errors(tiny) -> None:
    _, _, lm = tiny
    with pytest.raises(InvalidParameterError, match="empty"):
        collect_batch(lm, [])
    with pytest.raises(InvalidParameterError, match="vocabulary"):
        collect_batch(lm, [[1, VOCAB + 5]])


def test_every_registered_family_has_a_tiny_config() -> None:
    """The families routescope ships (the registry's built-ins) and the rows of `TINY` agree."""
    builtin = {entry.family for entry in registered_adapters() if entry.builtin}
    missing = sorted(builtin - set(TINY))
    assert not missing, f"registered families without a TINY row in this file: {missing}"
    unknown = sorted(set(TINY) - builtin)
    assert not unknown, f"TINY rows for families no adapter registers: {unknown}"


@pytest.mark.parametrize("family_name", ["olmoe", "gpt_oss"])
def test_bfloat16_weights_are_the_ones_the_model_used(family_name: str) -> None:
    """In bf16 the recorded float32 weights equal the router's own bf16 outputs exactly."""
    model = build_tiny(family_name).to(torch.bfloat16)
    lm = LoadedModel.from_model(model)
    assert lm.dtype == "bfloat16"
    rec = collect_batch(lm, PROMPTS[:1])
    ref = reference_capture(model, family_name, PROMPTS[0])
    np.testing.assert_array_equal(rec.experts.astype(np.int64), ref.experts)
    np.testing.assert_array_equal(rec.weights, ref.weights)


@pytest.mark.parametrize(
    ("family_name", "overrides", "moe_layers"),
    [
        ("deepseek_v2", {"topk_method": "greedy"}, [1, 2]),
        ("deepseek_v2", {"first_k_dense_replace": 0}, [0, 1, 2]),
        ("deepseek_v3", {"norm_topk_prob": False, "first_k_dense_replace": 2}, [2]),
        ("qwen3_moe", {"decoder_sparse_step": 2}, [1]),
        ("qwen2_moe", {"mlp_only_layers": [], "norm_topk_prob": False}, [0, 1, 2]),
        ("olmoe", {"norm_topk_prob": True}, [0, 1, 2]),
    ],
)
def test_config_variants(family_name: str, overrides: dict, moe_layers: list[int]) -> None:
    """Dense/MoE layer rules and routing options are read from the config, not assumed."""
    model = build_tiny(family_name, **overrides)
    lm = LoadedModel.from_model(model)
    assert lm.moe_layers == moe_layers
    for layer in range(3):
        has_router = True
        try:
            model.get_submodule(f"model.layers.{layer}.{TINY[family_name].router_attr}")
        except AttributeError:
            has_router = False
        assert has_router == (layer in moe_layers)
    rec = collect_batch(lm, PROMPTS[1:])
    for b, seq in enumerate(PROMPTS[1:]):
        ref = reference_capture_layers(model, family_name, seq, moe_layers)
        check_rows_match(rec, b, ref, len(seq))


def test_error_inside_router_edit_propagates_and_engine_recovers() -> None:
    """A user error raised by a RouterEdit inside the trace keeps its type; the next batch works."""
    model = build_tiny("olmoe")
    lm = LoadedModel.from_model(model)

    def bad_edit(*args):
        raise InvalidParameterError("expert 99 is out of range")

    with pytest.raises(InvalidParameterError, match="expert 99"):
        collect_batch(lm, PROMPTS, steering=bad_edit)
    rec = collect_batch(lm, PROMPTS[:1])
    check_rows_match(rec, 0, reference_capture(model, "olmoe", PROMPTS[0]), len(PROMPTS[0]))


# ---- the KV-cache keyword (transformers 5.24 renamed past_key_values -> cache) ----------------

#: the name every family uses in the installed transformers (5.23 and earlier: past_key_values)
INSTALLED_CACHE_NAME = (
    "cache" if Version(transformers.__version__).release >= (5, 24) else "past_key_values"
)


def test_cache_keyword_and_output_field_follow_the_model(tiny) -> None:
    """The cache keyword is read from the forward's signature and the cache from the output field
    the model filled; passed under that name, the very same cache object is used and returned,
    with no FutureWarning (5.24 warns on every forward given ``past_key_values``)."""
    from transformers.cache_utils import Cache

    family, model, lm = tiny
    name = cache_kwarg(model)
    assert name == INSTALLED_CACHE_NAME
    assert name in inspect.signature(model.forward).parameters
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = model(torch.tensor([PROMPTS[1]]), use_cache=True)
        cache = output_cache(out)
        assert isinstance(cache, Cache)
        step = model(torch.tensor([[5]]), use_cache=True, **{name: cache})
    assert output_cache(step) is cache
    # the step continued the cached prompt: same logits as the whole sequence at once
    with torch.no_grad():
        full = model(torch.tensor([[*PROMPTS[1], 5]])).logits[0, -1]
    torch.testing.assert_close(step.logits[0, -1], full, rtol=1e-4, atol=1e-5)


def _rename_shim(fn: Any) -> Any:
    """What transformers' ``deprecate_kwarg`` leaves: a ``(*args, **kwargs)`` wrapper made with
    ``functools.wraps`` (so ``__wrapped__`` points at the real forward)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapped


def test_cache_kwarg_reads_through_wrappers_and_falls_back_to_the_installed_version() -> None:
    class New(torch.nn.Module):
        @_rename_shim
        @_rename_shim
        def forward(self, input_ids: Any = None, cache: Any = None, **kwargs: Any) -> None:
            return None

    class Old(torch.nn.Module):
        def forward(
            self, input_ids: Any = None, past_key_values: Any = None, **kwargs: Any
        ) -> None:
            return None

    class Opaque(torch.nn.Module):
        def forward(self, *args: Any, **kwargs: Any) -> None:
            return None

    assert inspect.signature(New().forward, follow_wrapped=False).parameters.keys() == {
        "args",
        "kwargs",
    }
    assert cache_kwarg(New()) == "cache"
    assert cache_kwarg(Old()) == "past_key_values"
    assert cache_kwarg(Opaque()) == INSTALLED_CACHE_NAME


def test_output_cache_reads_the_declared_field_not_the_compat_property() -> None:
    @dataclass
    class OldOutput:
        logits: Any = None
        past_key_values: Any = None

    @dataclass
    class NewOutput:
        logits: Any = None
        cache: Any = None

        @property
        def past_key_values(self) -> Any:  # like 5.24's ModelOutput: logs a deprecation
            raise AssertionError("the backward-compatibility property was read")

    marker = object()
    assert output_cache(OldOutput(past_key_values=marker)) is marker
    assert output_cache(NewOutput(cache=marker)) is marker
    assert output_cache(NewOutput()) is None
    with pytest.raises(TypeError, match="no KV cache field"):
        output_cache((torch.zeros(1), marker))


def test_a_cache_keyword_the_model_ignores_is_an_error(monkeypatch) -> None:
    """transformers 5.23 silently swallows ``cache=`` in ``**kwargs`` and starts a new cache: the
    engine must refuse rather than record routing computed without the prompt's context."""
    import routescope.collect.engine as engine

    lm = LoadedModel.from_model(build_tiny("olmoe"))
    monkeypatch.setattr(engine, "cache_kwarg", lambda model: "kv_cache_nobody_takes")
    with pytest.raises(RoutescopeError, match="did not use the KV cache passed as kv_cache_"):
        collect_batch(lm, PROMPTS[:1], max_new_tokens=2)
    rec = collect_batch(lm, PROMPTS[:1])  # prefill needs no cache
    check_rows_match(rec, 0, reference_capture(lm.model, "olmoe", PROMPTS[0]), len(PROMPTS[0]))
