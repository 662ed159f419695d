"""The shipped demo model: loads offline, has the promised shape and size, and routes with structure.

The structure criterion is computed here plainly from the collection engine's output: for every
domain, in at least half of the MoE layers, some expert is selected by that domain's tokens at
>= 3x the uniform rate k/E AND at >= 2x its rate on the other domains' tokens; and the top-1
expert of consecutive tokens repeats more often than chance (1/E) in every layer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from routescope.models.demo import DEMO_DOMAINS, DEMO_MODEL_PATH, DEMO_PROMPTS_DIR

pytestmark = pytest.mark.e2e

PROMPTS_PER_DOMAIN = 40


def _read_jsonl(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def test_shape_and_size_budget(demo_model):
    model, tok = demo_model
    cfg = model.config
    assert cfg.model_type == "olmoe"
    assert cfg.num_hidden_layers >= 6
    assert cfg.num_experts >= 32
    assert cfg.num_experts_per_tok >= 4
    routers = [m for m in model.modules() if type(m).__name__ == "OlmoeTopKRouter"]
    assert len(routers) == cfg.num_hidden_layers  # every layer is an MoE layer
    assert all(r.weight.shape == (cfg.num_experts, cfg.hidden_size) for r in routers)
    total = sum(f.stat().st_size for f in DEMO_MODEL_PATH.rglob("*") if f.is_file())
    assert total <= 25 * 1024 * 1024
    # plain loading computes in float32 although the weights are stored in 16 bits
    assert next(model.parameters()).dtype == torch.float32


def test_tokenizer_round_trip_and_specials(demo_model):
    _, tok = demo_model
    assert tok.bos_token and tok.eos_token and tok.pad_token
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    text = "def f(x):\n    return x + 1  # Größe, размер, 3.1415"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_prompt_sets_are_well_formed(demo_model):
    _, tok = demo_model
    for domain in DEMO_DOMAINS:
        rows = _read_jsonl(DEMO_PROMPTS_DIR / f"{domain}.jsonl")
        assert len(rows) >= 200, domain
        assert {r["label"] for r in rows} == {domain}
        assert {r["split"] for r in rows} == {"train", "heldout"}
        assert len({r["id"] for r in rows}) == len(rows)
        lengths = [len(tok(r["text"], add_special_tokens=False)["input_ids"]) for r in rows]
        assert min(lengths) >= 32 and max(lengths) <= 128, domain
    for path in sorted(DEMO_PROMPTS_DIR.glob("behaviour_*.jsonl")):
        rows = _read_jsonl(path)
        pairs: dict[str, set[str]] = {}
        for r in rows:
            assert r["label"] in {"target", "control"}
            assert r["text"].count(r["target"]) == 1, r["id"]
            pairs.setdefault(r["pair"], set()).add(r["label"])
        assert len(pairs) >= 50, path.name
        assert all(v == {"target", "control"} for v in pairs.values()), path.name


def test_heldout_loss_beats_unigram(demo_model):
    """On held-out prompts, the model's NLL per token is below a unigram model (add-one smoothed)
    fitted on the same domain's train-split prompts."""
    model, tok = demo_model
    vocab = model.config.vocab_size
    for domain in DEMO_DOMAINS:
        rows = _read_jsonl(DEMO_PROMPTS_DIR / f"{domain}.jsonl")
        counts = np.ones(vocab)
        for r in rows:
            if r["split"] == "train":
                counts += np.bincount(tok(r["text"])["input_ids"][1:], minlength=vocab)
        unigram_logp = np.log(counts / counts.sum())
        test_ids = [tok(r["text"])["input_ids"] for r in rows if r["split"] == "heldout"][:16]
        nll = uni = 0.0
        n = 0
        with torch.no_grad():
            for seq in test_ids:
                x = torch.tensor([seq])
                logp = torch.log_softmax(model(input_ids=x).logits[0, :-1], dim=-1)
                nll -= float(logp.gather(-1, x[0, 1:, None]).sum())
                uni -= float(unigram_logp[seq[1:]].sum())
                n += len(seq) - 1
        assert nll / n < uni / n, (domain, nll / n, uni / n)


def _domain_routing(demo_model) -> dict[str, np.ndarray]:
    """experts[N_d, L, k] of each domain's held-out prompts, via the collection engine."""
    from routescope.collect.engine import collect_batch
    from routescope.models.loading import LoadedModel

    model, tok = demo_model
    lm = LoadedModel.from_model(model, tok)
    routed: dict[str, np.ndarray] = {}
    for domain in DEMO_DOMAINS:
        rows = [r for r in _read_jsonl(DEMO_PROMPTS_DIR / f"{domain}.jsonl")]
        rows = [r for r in rows if r["split"] == "heldout"][:PROMPTS_PER_DOMAIN]
        ids = [tok(r["text"])["input_ids"] for r in rows]
        parts = []
        for i in range(0, len(ids), 20):
            br = collect_batch(lm, ids[i : i + 20])
            assert br.num_sequences == len(ids[i : i + 20])
            assert br.num_tokens == sum(len(s) for s in ids[i : i + 20])
            for b in range(br.num_sequences):
                parts.append(br.experts[br.sequence(b)])
        routed[domain] = parts  # type: ignore[assignment]
    return routed  # type: ignore[return-value]


@pytest.fixture(scope="module")
def routing(demo_model):
    return _domain_routing(demo_model)


def test_engine_routing_matches_the_model(demo_model, routing):
    """The engine's experts are the top-k of the model's own router logits (rank order aside)."""
    model, tok = demo_model
    first = [r for r in _read_jsonl(DEMO_PROMPTS_DIR / "python.jsonl") if r["split"] == "heldout"]
    ids = tok(first[0]["text"])["input_ids"]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), output_router_logits=True)
    k = model.config.num_experts_per_tok
    for layer, logits in enumerate(out.router_logits):
        ref = torch.topk(logits, k, dim=-1).indices.numpy()
        got = routing["python"][0][:, layer, :]
        assert got.shape == ref.shape
        assert all(set(a) == set(b) for a, b in zip(got.tolist(), ref.tolist(), strict=True))


def test_structure_criterion(demo_model, routing):
    model, _ = demo_model
    num_experts = model.config.num_experts
    k = model.config.num_experts_per_tok
    layers = model.config.num_hidden_layers
    uniform = k / num_experts
    # rate[d][l, e] = share of domain d's tokens whose k selected experts include e at layer l
    counts, ntok = {}, {}
    for d, seqs in routing.items():
        c = np.zeros((layers, num_experts))
        n = 0
        for ex in seqs:
            n += len(ex)
            for l_ in range(layers):
                for row in ex[:, l_, :]:
                    for e in set(row.tolist()):
                        c[l_, e] += 1
        counts[d], ntok[d] = c, n
    passing = {}
    for d in routing:
        rate = counts[d] / ntok[d]
        other = sum(counts[o] for o in routing if o != d) / sum(ntok[o] for o in routing if o != d)
        ok_layers = [
            any(
                rate[l_, e] >= 3 * uniform and rate[l_, e] >= 2 * other[l_, e]
                for e in range(num_experts)
            )
            for l_ in range(layers)
        ]
        passing[d] = sum(ok_layers)
    assert all(v * 2 >= layers for v in passing.values()), passing

    # top-1 repetition of consecutive tokens within a sequence, per layer, above 1/E
    same = np.zeros(layers)
    pairs = 0
    for seqs in routing.values():
        for ex in seqs:
            same += (ex[1:, :, 0] == ex[:-1, :, 0]).sum(axis=0)
            pairs += len(ex) - 1
    assert np.all(same / pairs > 1 / num_experts), same / pairs
