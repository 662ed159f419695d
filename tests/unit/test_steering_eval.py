"""Steering evaluation on a tiny OLMoE with a character tokenizer: log-likelihoods against plain
per-text forwards, target spans, random baselines, side-by-side generation."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from routescope.core.errors import InvalidParameterError  # noqa: E402
from routescope.models import LoadedModel  # noqa: E402
from routescope.steering import SteeringSpec, steered  # noqa: E402
from routescope.steering.evaluate import (  # noqa: E402
    EvalSet,
    loglik_change,
    random_baseline,
    random_spec,
    side_by_side,
    text_logliks,
)

torch.set_num_threads(1)

CHARS = list("abcdefghijklmnopqrstuvwxyz .,")
TEXTS = ["the cat sat on the mat.", "a b c", "hello world, hello moe", "zz", "routing is fun"]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def build_lm() -> LoadedModel:
    """A tiny random OLMoE (2 layers, E=8, k=2) over the character vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "olmoe",
        vocab_size=3 + len(CHARS),
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0.0, 1.0)
    return LoadedModel.from_model(model, _tokenizer(), model_id="tiny-olmoe")


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return build_lm()


SPEC = SteeringSpec.from_edits([(0, 1, "deactivate"), (0, 5, "deactivate"), (1, 2, "scale", 3.0)])


def _reference_loglik(lm: LoadedModel, text: str, spec, span=None) -> float:
    """One text alone, no padding: mean log p of the scored tokens, written out plainly."""
    ids = [3 + CHARS.index(c) for c in text]
    with steered(lm, spec), torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    vals = []
    for t in range(1, len(ids)):
        if span is None or span[0] <= t < span[1]:
            vals.append(float(logp[t - 1, ids[t]]))
    return float(np.mean(vals))


def test_logliks_match_unbatched_reference(lm: LoadedModel) -> None:
    ev = EvalSet.build(lm, TEXTS)
    for spec in (None, SPEC):
        got = text_logliks(lm, ev, spec, batch_size=3)
        ref = [_reference_loglik(lm, t, spec) for t in TEXTS]
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_change_is_steered_minus_base_and_zero_for_empty_spec(lm: LoadedModel) -> None:
    labels = ["x", "y", "x", "y", "x"]
    res = loglik_change(lm, SPEC, TEXTS, labels=labels, batch_size=2)
    ref_b = np.array([_reference_loglik(lm, t, None) for t in TEXTS])
    ref_s = np.array([_reference_loglik(lm, t, SPEC) for t in TEXTS])
    np.testing.assert_allclose(res.per_text["change"].to_numpy(), ref_s - ref_b, atol=1e-5)
    assert res.per_text["n_scored"].to_list() == [len(t) - 1 for t in TEXTS]
    assert res.mean_change == pytest.approx(float(np.mean(ref_s - ref_b)), abs=1e-5)
    by = res.by_label()
    assert by["label"].to_list() == ["x", "y"]
    np.testing.assert_allclose(
        by["change"].to_numpy(),
        [np.mean((ref_s - ref_b)[[0, 2, 4]]), np.mean((ref_s - ref_b)[[1, 3]])],
        atol=1e-5,
    )
    assert (res.per_text["change"].abs() > 0).any()  # the spec does something on this model
    empty = loglik_change(lm, SteeringSpec(), TEXTS)
    assert (empty.per_text["change"] == 0).all()


def test_target_spans_score_only_their_tokens(lm: LoadedModel) -> None:
    text = "the cat sat on the mat."
    spans = [(4, 7), "the mat"]
    res = loglik_change(lm, SPEC, [text, text], targets=spans)
    start = text.index("the mat")
    for got, span in zip(
        res.per_text.iter_rows(named=True), [(4, 7), (start, start + 7)], strict=True
    ):
        assert got["n_scored"] == span[1] - span[0]
        assert got["base"] == pytest.approx(_reference_loglik(lm, text, None, span), abs=1e-5)
        assert got["steered"] == pytest.approx(_reference_loglik(lm, text, SPEC, span), abs=1e-5)


def test_random_spec_same_shape_other_experts() -> None:
    rng = np.random.default_rng(1)
    seen: set[int] = set()
    for _ in range(200):
        rs = random_spec(SPEC, 8, rng)
        assert rs.layers() == SPEC.layers() and rs.mode == SPEC.mode
        for layer in SPEC.layers():
            mine = SPEC.for_layer(layer)
            theirs = rs.for_layer(layer)
            assert [e.action for e in theirs] == [e.action for e in mine]
            assert [e.factor for e in theirs] == [e.factor for e in mine]
            drawn = [e.expert for e in theirs]
            assert len(set(drawn)) == len(drawn)
            assert not set(drawn) & {e.expert for e in mine}
            if layer == 0:
                seen |= set(drawn)
    assert seen == set(range(8)) - {1, 5}  # every eligible expert gets drawn, no other
    a = random_spec(SPEC, 8, np.random.default_rng(7))
    b = random_spec(SPEC, 8, np.random.default_rng(7))
    assert a == b


def test_random_baseline_spread_matches_its_draws(lm: LoadedModel) -> None:
    ev = EvalSet.build(lm, TEXTS, labels=["x", "y", "x", "y", "x"])
    calls: list[int] = []
    rb = random_baseline(lm, SPEC, ev, draws=4, seed=3, batch_size=4, progress=calls.append)
    assert calls == [1, 2, 3, 4] and len(rb.specs) == 4
    base = np.array([_reference_loglik(lm, t, None) for t in TEXTS])
    means = np.array(
        [np.mean([_reference_loglik(lm, t, s) for t in TEXTS] - base) for s in rb.specs]
    )
    s = rb.summary()
    assert s["draws"] == 4
    assert s["mean"] == pytest.approx(means.mean(), abs=1e-5)
    assert s["std"] == pytest.approx(means.std(ddof=1), abs=1e-5)
    assert s["min"] == pytest.approx(means.min(), abs=1e-5)
    assert s["max"] == pytest.approx(means.max(), abs=1e-5)
    x_means = rb.draw_means("x")
    assert len(x_means) == 4
    with pytest.raises(InvalidParameterError):
        random_baseline(lm, SteeringSpec(), ev)


def test_side_by_side_greedy(lm: LoadedModel) -> None:
    prompt = "the cat"
    sbs = side_by_side(lm, SPEC, prompt, max_new_tokens=5)
    ids = [3 + CHARS.index(c) for c in prompt]
    # greedy reference: argmax loop without cache, unsteered and steered; the greedy token's
    # log-prob under its own model is the row maximum of that model's log-softmax
    for which, spec in (("base", None), ("steered", SPEC)):
        seq, best = list(ids), []
        with steered(lm, spec), torch.no_grad():
            for _ in range(5):
                logp = torch.log_softmax(lm.model(torch.tensor([seq])).logits[0, -1].double(), -1)
                seq.append(int(logp.argmax()))
                best.append(float(logp.max()))
        rows = sbs.tokens.filter(sbs.tokens["which"] == which)
        assert rows["token_id"].to_list() == seq[len(ids) :]
        own = rows["logp_base" if which == "base" else "logp_steered"].to_numpy()
        np.testing.assert_allclose(own, best, atol=1e-5)
    steer_rows = sbs.tokens.filter(sbs.tokens["which"] == "steered")
    np.testing.assert_allclose(
        steer_rows["change"].to_numpy(),
        (steer_rows["logp_steered"] - steer_rows["logp_base"]).to_numpy(),
    )
    same = side_by_side(lm, SteeringSpec(), prompt, max_new_tokens=4, sampled=True, seed=5)
    assert same.base_text == same.steered_text
    assert (same.tokens["change"] == 0).all()


def test_side_by_side_without_a_tokenizer_is_one_line(lm: LoadedModel) -> None:
    """A model wrapped without a tokenizer (`LoadedModel.from_model`'s default) cannot generate
    text side by side: one clear error, not an AttributeError."""
    bare = LoadedModel.from_model(lm.model, model_id="tiny-olmoe")
    with pytest.raises(
        InvalidParameterError, match="has no tokenizer; generation needs one"
    ) as err:
        side_by_side(bare, SPEC, "the cat", max_new_tokens=2)
    assert "\n" not in str(err.value)
