"""Tiny random models and tokenizers shared by the integration and end-to-end tests (no hub)."""

from __future__ import annotations

VOCAB, PAD, BOS, EOS = 96, 0, 1, 2


def build_tiny_olmoe(seed: int):
    """A tiny random OLMoE (3 layers, 8 experts, top-2) with randomized router weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "olmoe",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        num_experts=8,
        num_experts_per_tok=2,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param.normal_(0.0, 1.0)
    return model


WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "rug",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "one",
    "two",
    "three",
    "four",
    "five",
    "def",
    "return",
    "if",
    "else",
    "for",
    "in",
    "print",
    "x",
    "y",
    "z",
    "=",
    "(",
    ")",
    ":",
    "+",
    "-",
    "*",
    "0",
    "1",
    "2",
    "3",
    "der",
    "die",
    "das",
    "und",
    "ist",
    "ein",
]


def make_tokenizer():
    """A word-level fast tokenizer whose ids fit the tiny model's vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": PAD, "[BOS]": BOS, "[EOS]": EOS, "[UNK]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    assert len(vocab) <= VOCAB
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", BOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]"
    )
