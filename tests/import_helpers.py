"""Shared by the import tests: a run collected by routescope from a tiny model, and comparisons.

The original run comes from a tiny Qwen3-MoE whose layer 1 is dense (`mlp_only_layers=[1]`), so
every format's dense-layer handling is exercised; the model directory (config + tokenizer, saved
with save_pretrained) is what `--model` points at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
from tiny_models import BOS, EOS, PAD, VOCAB, make_tokenizer

PROSE = [
    "the cat sat on the mat",
    "a big dog ran under the red rug",
    "one two three four five",
    "der cat ist ein dog und die mat",
]
CODE = [
    "def f ( x ) : return x + 1",
    "if x = 0 : print ( y ) else : print ( z )",
    "for x in y : print ( x * 2 )",
]
NUM_LAYERS, MOE_LAYERS, E, K = 4, [0, 2, 3], 8, 2


def build_tiny_qwen3(seed: int = 5):
    """A tiny random Qwen3-MoE (4 layers, layer 1 dense, top-2 of 8, renormalized)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "qwen3_moe",
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        num_experts=E,
        num_experts_per_tok=K,
        moe_intermediate_size=16,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        norm_topk_prob=True,
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


@dataclass
class Original:
    """The collected run: its store, id, Trace (all phases) and the model directory."""

    db: str
    run_id: str
    trace: object
    model_dir: str
    lm: object


def collect_original(root: Path) -> Original:
    """Collect PROSE + CODE (2 generated tokens each) from the tiny model into root/orig.duckdb."""
    from routescope.collect.engine import collect_batch
    from routescope.collect.jobs import job_from_options
    from routescope.collect.runner import run_job
    from routescope.models import LoadedModel
    from routescope.store.store import RoutingStore

    model = build_tiny_qwen3()
    tok = make_tokenizer()
    model_dir = root / "model"
    model.config.save_pretrained(model_dir)  # the config only: an import never reads weights
    tok.save_pretrained(model_dir)
    lm = LoadedModel.from_model(model, tokenizer=tok, model_id=str(model_dir))
    prose, code = root / "prose.txt", root / "code.jsonl"
    prose.write_text("\n".join(PROSE) + "\n")
    code.write_text("\n".join(json.dumps({"text": t, "label": "code"}) for t in CODE) + "\n")
    db = str(root / "orig.duckdb")
    job = job_from_options(
        [str(prose), str(code)],
        db=db,
        batch_size=3,
        max_new_tokens=2,
        save_probs=True,
        model=str(model_dir),
    )
    run_job(job, quiet=True, lm=lm, collect_fn=collect_batch)
    with RoutingStore(db, read_only=True) as store:
        trace = store.load_trace(job.run_id)
    assert trace.layers == tuple(MOE_LAYERS)
    return Original(db=db, run_id=job.run_id, trace=trace, model_dir=str(model_dir), lm=lm)


def per_sequence(trace) -> list[dict[str, np.ndarray]]:
    """The trace cut into its sequences (experts, weights, token ids, positions, phase)."""
    out = []
    for s in range(trace.num_sequences):
        lo, hi = int(trace.seq_offsets[s]), int(trace.seq_offsets[s + 1])
        out.append(
            {
                "experts": trace.experts[lo:hi],
                "weights": None if trace.weights is None else trace.weights[lo:hi],
                "token_ids": trace.token_ids[lo:hi],
                "positions": trace.positions[lo:hi],
                "phase": trace.phase[lo:hi],
                "label": trace.labels[s],
            }
        )
    return out


def router_probs(db: str, run: str) -> np.ndarray:
    """float32[N, L, E]: the run's full router distributions, rows in (seq_id, pos) order."""
    con = duckdb.connect(db, read_only=True)
    rows = con.execute(
        "SELECT probs FROM router_probs WHERE run_id = ? ORDER BY seq_id, pos, layer", [run]
    ).fetchall()
    con.close()
    flat = np.asarray([r[0] for r in rows], dtype=np.float32)
    return flat.reshape(-1, len(MOE_LAYERS), flat.shape[-1])


def imported_trace(db: str, run: str):
    from routescope.store.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        return store.load_trace(run)


def store_dump(db: str) -> dict[str, list]:
    """Every row of the run tables (to check that a failed import changed nothing)."""
    if not Path(db).exists():
        return {}
    con = duckdb.connect(db, read_only=True)
    out = {}
    for table in ("runs", "sequences", "tokens", "routes"):
        try:
            out[table] = con.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()
        except duckdb.Error:
            out[table] = None
    con.close()
    return out
