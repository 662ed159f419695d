"""Train the demo MoE model: corpus -> byte-level BPE tokenizer -> OLMoE-style model -> package.

``python -m routescope.models.demo.train`` rebuilds everything from text available offline and
writes the shipped model and tokenizer to ``routescope/models/demo/model/``. Reproducible: a fixed
seed, a fixed step count, deterministic corpus order, single process, ``--threads`` torch threads
(default 2; the shipped model used 1 on a shared machine).
The load-balancing loss is OLMoE's (Switch-style) router auxiliary loss, which the Hugging Face
model adds to the LM loss itself when ``output_router_logits`` is set.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from routescope.models.demo.corpus import DOMAINS, build_corpus, corpus_digest, load_corpus

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

HERE = Path(__file__).resolve().parent
WORK_DIR = HERE / "_work"
MODEL_DIR = HERE / "model"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


@dataclass
class TrainSettings:
    """Everything that determines the trained model (recorded in the model card)."""

    seed: int = 20260101
    steps: int = 2400
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    vocab_size: int = 8192
    hidden_size: int = 128
    intermediate_size: int = 128
    num_layers: int = 6
    num_heads: int = 4
    num_experts: int = 32
    top_k: int = 4
    router_aux_loss_coef: float = 0.01
    tie_word_embeddings: bool = True


def train_tokenizer(corpus: dict[str, list[dict[str, str]]], vocab_size: int, out: Path) -> None:
    """Train a byte-level BPE on the training chunks of all domains; save as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def texts():
        for domain in DOMAINS:
            for c in corpus[domain]:
                if c["split"] == "train":
                    yield c["text"]

    tok.train_from_iterator(texts(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=512
    )
    fast.save_pretrained(out)


def encode_domains(
    tokenizer: PreTrainedTokenizerBase, corpus: dict[str, list[dict[str, str]]], split: str
) -> dict[str, np.ndarray]:
    """One token stream per domain: the split's chunks, each followed by EOS (no BOS)."""
    eos = tokenizer.eos_token_id
    streams: dict[str, np.ndarray] = {}
    for domain in DOMAINS:
        texts = [c["text"] for c in corpus[domain] if c["split"] == split]
        enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
        ids: list[int] = []
        for e in enc:
            ids.extend(e)
            ids.append(eos)
        streams[domain] = np.asarray(ids, dtype=np.int64)
    return streams


def make_config(s: TrainSettings, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The OLMoE config: every layer MoE, no shared experts, fine-grained experts."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "olmoe",
        vocab_size=s.vocab_size,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads,
        num_experts=s.num_experts,
        num_experts_per_tok=s.top_k,
        max_position_embeddings=512,
        router_aux_loss_coef=s.router_aux_loss_coef,
        output_router_logits=False,  # on during training only; inference callers do not need it
        norm_topk_prob=False,
        tie_word_embeddings=s.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def sample_batch(
    streams: dict[str, np.ndarray], rng: np.random.Generator, batch: int, seq_len: int, bos: int
) -> torch.Tensor:
    """Rows of BOS + (seq_len-1) consecutive tokens from one domain each; domains balanced."""
    rows = np.empty((batch, seq_len), dtype=np.int64)
    order = rng.permutation(np.arange(batch) % len(DOMAINS))
    for i, d in enumerate(order):
        stream = streams[DOMAINS[d]]
        start = int(rng.integers(0, len(stream) - seq_len))
        rows[i, 0] = bos
        rows[i, 1:] = stream[start : start + seq_len - 1]
    return torch.from_numpy(rows)


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, extra: dict
) -> None:
    """Save fp16 safetensors + tokenizer; config says float32 so plain loading computes in fp32."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).half()
    half.config.output_router_logits = False
    half.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "training.json").write_text(json.dumps(extra, indent=2) + "\n")
    gen = out / "generation_config.json"
    if gen.exists():
        gen.unlink()


def main(argv: list[str] | None = None) -> None:
    """Build corpus and tokenizer, train, and write the package model directory."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=TrainSettings.steps)
    p.add_argument("--aux-coef", type=float, default=TrainSettings.router_aux_loss_coef)
    p.add_argument("--out", type=Path, default=MODEL_DIR)
    p.add_argument("--work", type=Path, default=WORK_DIR)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--probe", type=int, default=0, help="time this many steps and stop")
    args = p.parse_args(argv)
    s = TrainSettings(steps=args.steps, router_aux_loss_coef=args.aux_coef)
    torch.set_num_threads(args.threads)
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)

    corpus_dir = args.work / "corpus"
    stats = build_corpus(corpus_dir)
    corpus = load_corpus(corpus_dir)
    tok_dir = args.work / "tokenizer"
    train_tokenizer(corpus, s.vocab_size, tok_dir)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    streams = encode_domains(tokenizer, corpus, "train")
    tokens_per_domain = {d: int(len(v)) for d, v in streams.items()}
    print("corpus", json.dumps(stats), "train tokens", json.dumps(tokens_per_domain), flush=True)

    cfg = make_config(s, tokenizer)
    model = AutoModelForCausalLM.from_config(cfg)
    model.config.output_router_logits = True
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": s.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=s.lr,
        betas=(0.9, 0.95),
    )
    steps = args.probe or s.steps
    t0 = time.time()
    log_every = 10
    lm_acc = aux_acc = 0.0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        x = sample_batch(streams, rng, s.batch_size, s.seq_len, tokenizer.bos_token_id)
        out = model(input_ids=x, labels=x, output_router_logits=True)
        aux = float(out.aux_loss.detach())
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        lm_acc += float(out.loss) - s.router_aux_loss_coef * aux
        aux_acc += aux
        if (step + 1) % log_every == 0 or step + 1 == steps:
            n = (step % log_every) + 1
            el = time.time() - t0
            print(
                f"step {step + 1}/{steps} lm {lm_acc / n:.4f} aux {aux_acc / n:.4f} "
                f"lr {lr_at(step, s):.2e} elapsed {el:.0f}s ({el / (step + 1):.3f}s/step)",
                flush=True,
            )
            lm_acc = aux_acc = 0.0
        if (step + 1) % 100 == 0 and not args.probe:
            save_model(model, tokenizer, args.work / "checkpoint", {"step": step + 1})
    elapsed = time.time() - t0
    if args.probe:
        print(f"probe: {elapsed / steps:.3f} s/step", flush=True)
        return
    extra = {
        "settings": asdict(s),
        "train_seconds": round(elapsed, 1),
        "train_tokens_seen": steps * s.batch_size * s.seq_len,
        "corpus_chars": stats,
        "corpus_sha256": corpus_digest(corpus_dir),
        "train_tokens_per_domain": tokens_per_domain,
        "parameters": n_params,
        "torch": torch.__version__,
        "threads": args.threads,
    }
    save_model(model, tokenizer, args.out, extra)
    print(f"saved to {args.out} after {elapsed:.0f}s", flush=True)


if __name__ == "__main__":
    main()
