"""Evaluate the shipped demo model: held-out loss per domain against unigram baselines, and the
routing-structure criterion per (domain, layer).

``python -m routescope.models.demo.evaluate`` prints markdown tables for MODEL_CARD.md. Held-out
text is the corpus chunks never trained on (rebuilt deterministically if ``_work`` is missing).
Losses are mean negative log-likelihood in nats per predicted token, over windows of BOS + 127
tokens; the unigram baselines predict every token from training-set token frequencies (add-one
smoothed), pooled over all domains or per domain, scored on the same predicted tokens.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from routescope.models.demo import DEMO_DOMAINS, DEMO_MODEL_PATH
from routescope.models.demo.corpus import build_corpus, corpus_digest, load_corpus
from routescope.models.demo.train import WORK_DIR, encode_domains


@dataclass
class DomainResult:
    """Held-out numbers for one domain."""

    domain: str
    tokens: int
    model_nats: float
    unigram_pooled_nats: float
    unigram_domain_nats: float


def windows(stream: np.ndarray, seq_len: int, bos: int, max_windows: int) -> np.ndarray:
    """Non-overlapping rows of BOS + (seq_len-1) tokens from a stream."""
    n = min(max_windows, (len(stream)) // (seq_len - 1))
    body = stream[: n * (seq_len - 1)].reshape(n, seq_len - 1)
    return np.concatenate([np.full((n, 1), bos, dtype=np.int64), body], axis=1)


def unigram_logprobs(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed log-probabilities from token counts."""
    c = counts.astype(np.float64) + 1.0
    return np.log(c / c.sum())


def structure_cells(
    experts: dict[str, np.ndarray], num_experts: int, top_k: int
) -> dict[str, list[bool]]:
    """Per domain and layer: does some expert reach >= 3x uniform (k/E) on the domain's tokens AND
    >= 2x its rate on all other domains' tokens?  ``experts[d]`` is int[N_d, L, k]."""
    rates: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for d, ex in experts.items():
        n, layers, _ = ex.shape
        c = np.zeros((layers, num_experts))
        for layer in range(layers):
            c[layer] = np.bincount(ex[:, layer].ravel(), minlength=num_experts)
        counts[d] = c
        rates[d] = c / n
    uniform = top_k / num_experts
    result: dict[str, list[bool]] = {}
    for d in experts:
        other_counts = sum(counts[o] for o in experts if o != d)
        other_n = sum(len(experts[o]) for o in experts if o != d)
        other_rate = other_counts / other_n
        ok = (rates[d] >= 3 * uniform) & (rates[d] >= 2 * other_rate)
        result[d] = [bool(row.any()) for row in ok]
    return result


def top1_repetition(experts: np.ndarray, seq_len: int) -> np.ndarray:
    """Per layer: share of consecutive token pairs (within a window) with the same top-1 expert."""
    n, layers, _ = experts.shape
    top1 = experts[:, :, 0].reshape(n // seq_len, seq_len, layers)
    return (top1[:, 1:] == top1[:, :-1]).mean(axis=(0, 1))


def evaluate(model_dir: Path, max_windows: int = 200, seq_len: int = 128) -> dict:
    """Compute loss, baselines and routing structure on held-out text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    corpus_dir = WORK_DIR / "corpus"
    if not (corpus_dir / "numbers.jsonl").exists():
        build_corpus(corpus_dir)
    corpus = load_corpus(corpus_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = model.config
    vocab = cfg.vocab_size
    train = encode_domains(tok, corpus, "train")
    held = encode_domains(tok, corpus, "heldout")
    dom_counts = {d: np.bincount(train[d], minlength=vocab) for d in DEMO_DOMAINS}
    pooled_lp = unigram_logprobs(np.sum(list(dom_counts.values()), axis=0))
    results: list[DomainResult] = []
    routed: dict[str, np.ndarray] = {}
    for d in DEMO_DOMAINS:
        rows = windows(held[d], seq_len, tok.bos_token_id, max_windows)
        nll_sum, n_tok, ex_parts = 0.0, 0, []
        with torch.no_grad():
            for i in range(0, len(rows), 32):
                x = torch.from_numpy(rows[i : i + 32])
                out = model(input_ids=x, output_router_logits=True)
                logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
                tgt = x[:, 1:]
                nll_sum += float(-logp.gather(-1, tgt[..., None]).sum())
                n_tok += tgt.numel()
                per_layer = [
                    torch.topk(rl.float(), cfg.num_experts_per_tok, dim=-1).indices
                    for rl in out.router_logits
                ]
                ex_parts.append(torch.stack(per_layer, dim=1).numpy())
        targets = rows[:, 1:].ravel()
        dom_lp = unigram_logprobs(dom_counts[d])
        results.append(
            DomainResult(
                domain=d,
                tokens=n_tok,
                model_nats=nll_sum / n_tok,
                unigram_pooled_nats=float(-pooled_lp[targets].mean()),
                unigram_domain_nats=float(-dom_lp[targets].mean()),
            )
        )
        routed[d] = np.concatenate(ex_parts)
    cells = structure_cells(routed, cfg.num_experts, cfg.num_experts_per_tok)
    all_ex = np.concatenate([routed[d] for d in DEMO_DOMAINS])
    rep = top1_repetition(all_ex, seq_len)
    return {
        "domains": results,
        "cells": cells,
        "repetition": rep.tolist(),
        "num_experts": cfg.num_experts,
        "top_k": cfg.num_experts_per_tok,
        "corpus_sha256": corpus_digest(corpus_dir),
    }


def to_markdown(res: dict) -> str:
    """Markdown tables for the model card."""
    lines = [
        "| domain | held-out tokens | model (nats/token) | unigram, pooled | unigram, per domain |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in res["domains"]:
        lines.append(
            f"| {r.domain} | {r.tokens} | {r.model_nats:.3f} | {r.unigram_pooled_nats:.3f} "
            f"| {r.unigram_domain_nats:.3f} |"
        )
    toks = sum(r.tokens for r in res["domains"])
    mean = sum(r.model_nats * r.tokens for r in res["domains"]) / toks
    lines.append(f"| all | {toks} | {mean:.3f} | | |")
    cells = res["cells"]
    layers = len(next(iter(cells.values())))
    lines += [
        "",
        "Structure criterion (some expert at >= 3x k/E on the domain AND >= 2x its rate on the "
        "other domains):",
        "",
        "| domain | " + " | ".join(f"L{i}" for i in range(layers)) + " | layers passing |",
        "|---|" + "---|" * layers + "---:|",
    ]
    total = 0
    for d, row in cells.items():
        total += sum(row)
        marks = " | ".join("yes" if ok else "no" for ok in row)
        lines.append(f"| {d} | {marks} | {sum(row)}/{layers} |")
    lines.append(f"\nCells passing: {total} of {layers * len(cells)}.")
    rep = ", ".join(f"{v:.3f}" for v in res["repetition"])
    lines.append(
        f"\nTop-1 repetition of consecutive tokens per layer: {rep} (chance 1/E = "
        f"{1 / res['num_experts']:.3f})."
    )
    digest = ", ".join(f"{d} {h}" for d, h in res["corpus_sha256"].items())
    lines.append(f"\nCorpus sha256 (first 16 hex digits): {digest}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the evaluation as markdown (and optionally JSON)."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=DEMO_MODEL_PATH)
    p.add_argument("--max-windows", type=int, default=200)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    res = evaluate(args.model, args.max_windows)
    print(to_markdown(res))
    if args.json:
        out = dict(res, domains=[r.__dict__ for r in res["domains"]])
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
