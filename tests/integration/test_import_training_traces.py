"""Megatron-Core router traces, FLAME-MoE-Traces Parquet and moe-lrc router logits, written by the
test from a run routescope collected, imported back and compared where the format has the data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from import_helpers import (
    MOE_LAYERS,
    collect_original,
    imported_trace,
    per_sequence,
    router_probs,
    store_dump,
)

from routescope.importers import import_trace
from routescope.importers.base import ImportFileError


@pytest.fixture(scope="module")
def orig(tmp_path_factory):
    return collect_original(tmp_path_factory.mktemp("orig"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from routescope.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_one_line_exit_2(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# ---- Megatron ---------------------------------------------------------------------------------
def megatron_files(seqs, root, micro_batches=1):
    """Rank r's sequences as steps; each step one record per (layer) per micro-batch."""
    per_rank = {0: seqs[:4], 1: seqs[4:]}
    for rank, mine in per_rank.items():
        lines = []
        groups = [mine[i : i + micro_batches] for i in range(0, len(mine), micro_batches)]
        for step, group in enumerate(groups):
            for s in group:
                for col, layer in enumerate(MOE_LAYERS):
                    idx = s["experts"][:, col, :]
                    lines.append(
                        json.dumps(
                            {
                                "step": step,
                                "stage": "pre_dispatch",
                                "block": "decoder",
                                "layer": layer,
                                "rank": rank,
                                "num_tokens": len(idx),
                                "topk": 2,
                                "top_indices": idx.tolist(),
                            }
                        )
                    )
                lines.append(
                    json.dumps(
                        {
                            "step": step,
                            "stage": "pre_dispatch",
                            "block": "mtp",
                            "mtp_idx": 0,
                            "layer": 0,
                            "rank": rank,
                            "num_tokens": 1,
                            "topk": 2,
                            "top_indices": [[0, 1]],
                        }
                    )
                )
        (root / f"router_trace_rank{rank}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_megatron_round_trip(orig, tmp_path, micro_batches):
    seqs = per_sequence(orig.trace)
    megatron_files(seqs, tmp_path, micro_batches)
    db = str(tmp_path / "imp.duckdb")
    res = import_trace("megatron", [tmp_path], db=db, name="m", model=orig.model_dir)
    assert res.layers == MOE_LAYERS and not res.has_weights and not res.has_token_ids
    got = per_sequence(imported_trace(db, "m"))
    assert len(got) == len(seqs)
    for g, w in zip(got, seqs, strict=True):
        np.testing.assert_array_equal(g["experts"], w["experts"])
        np.testing.assert_array_equal(g["positions"], np.arange(len(w["positions"])))


def test_megatron_malformed(orig, tmp_path):
    seqs = per_sequence(orig.trace)
    db = str(tmp_path / "imp.duckdb")
    megatron_files(seqs[:1], tmp_path)
    import_trace("megatron", [tmp_path / "router_trace_rank0.jsonl"], db=db, name="first")
    before = store_dump(db)
    bad = tmp_path / "bad"
    bad.mkdir()
    megatron_files(seqs, bad)
    path = bad / "router_trace_rank1.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[4])
    rec["top_indices"] = rec["top_indices"][:-1]  # one token short of num_tokens
    lines[4] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    proc = _cli("import", "megatron", str(bad), "--db", db, "--name", "second", "-q")
    _assert_one_line_exit_2(proc, "router_trace_rank1.jsonl, line 5, field 'top_indices'")
    assert store_dump(db) == before


# ---- FLAME-MoE-Traces ---------------------------------------------------------------------------
def flame_tree(trace, root):
    """samples/ split in two files; actives/iter_0100/layer_NN.parquet numbered from 1."""
    (root / "samples").mkdir(parents=True)
    it = root / "actives" / "iter_0100"
    it.mkdir(parents=True)
    ids = trace.token_ids.astype(np.int32)
    half = len(ids) // 2
    pq.write_table(pa.table({"token_id": ids[:half]}), root / "samples" / "000.parquet")
    pq.write_table(pa.table({"token_id": ids[half:]}), root / "samples" / "001.parquet")
    for col, layer in enumerate(MOE_LAYERS):
        scores = trace.weights[:, col, :].astype(np.float16)
        idx = trace.experts[:, col, :].astype(np.int16)
        table = pa.table(
            {
                "scores": pa.array(list(scores), type=pa.list_(pa.float16())),
                "indices": pa.array(list(idx), type=pa.list_(pa.int16())),
            }
        )
        pq.write_table(table, it / f"layer_{layer + 1:02d}.parquet")


def test_flame_round_trip(orig, tmp_path):
    tr = orig.trace
    flame_tree(tr, tmp_path / "flame-moe-tiny")
    db = str(tmp_path / "imp.duckdb")
    res = import_trace(
        "flame", [tmp_path / "flame-moe-tiny"], db=db, name="f", seq_len=5, model=orig.model_dir
    )
    assert res.layers == MOE_LAYERS and res.has_weights
    got = imported_trace(db, "f")
    # the stream has no sequence boundaries: compare it token by token, cut every 5 tokens
    np.testing.assert_array_equal(got.experts, tr.experts)
    np.testing.assert_array_equal(got.token_ids, tr.token_ids)
    np.testing.assert_array_equal(got.weights, tr.weights.astype(np.float16).astype(np.float32))
    assert np.diff(got.seq_offsets).tolist() == [5] * (tr.num_tokens // 5) + (
        [tr.num_tokens % 5] if tr.num_tokens % 5 else []
    )


def test_flame_malformed(orig, tmp_path):
    tr = orig.trace
    flame_tree(tr, tmp_path / "ok")
    db = str(tmp_path / "imp.duckdb")
    import_trace("flame", [tmp_path / "ok"], db=db, name="first")
    before = store_dump(db)
    flame_tree(tr, tmp_path / "bad")
    victim = tmp_path / "bad" / "actives" / "iter_0100" / "layer_03.parquet"
    table = pq.read_table(victim)
    idx = table.column("indices").to_pylist()
    idx[7] = idx[7][:1]
    pq.write_table(table.set_column(1, "indices", pa.array(idx, type=pa.list_(pa.int16()))), victim)
    proc = _cli("import", "flame", str(tmp_path / "bad"), "--db", db, "--name", "second", "-q")
    _assert_one_line_exit_2(proc, "layer_03.parquet, row 7, field 'indices'")
    assert store_dump(db) == before
    # two iterations in the tree: say which to pass
    (tmp_path / "ok" / "actives" / "iter_0200").mkdir()
    with pytest.raises(ImportFileError, match="iter_0100, iter_0200; pass one"):
        import_trace("flame", [tmp_path / "ok"], db=db, name="third")


# ---- moe-lrc ------------------------------------------------------------------------------------
def lrc_files(orig, root, dtype=torch.float32):
    """Per-layer logits files keyed by data set ('prose', 'code'), [samples, tokens, E]; the token
    file beside them. Logits = log(router probs): the same softmax, so the same routing."""
    from safetensors.torch import save_file

    tr = orig.trace
    probs = router_probs(orig.db, orig.run_id)
    seqs = per_sequence(tr)
    groups = {"prose": [0, 1, 2, 3], "code": [4, 5, 6]}
    n = int(np.diff(tr.seq_offsets).min())  # moe-lrc samples have one length: cut to it
    for col, layer in enumerate(MOE_LAYERS):
        tensors = {}
        for key, members in groups.items():
            rows = [probs[tr.seq_offsets[i] : tr.seq_offsets[i] + n, col] for i in members]
            tensors[key] = torch.from_numpy(np.log(np.stack(rows))).to(dtype)
        save_file(tensors, str(root / f"tiny_{layer:02d}.safetensors"))
    save_file(
        {
            k: torch.from_numpy(np.stack([seqs[i]["token_ids"][:n] for i in m]))
            for k, m in groups.items()
        },
        str(root / "tiny.safetensors"),
    )
    return groups, n


def test_moe_lrc_round_trip(orig, tmp_path):
    groups, n = lrc_files(orig, tmp_path)
    db = str(tmp_path / "imp.duckdb")
    res = import_trace("moe-lrc", [tmp_path], db=db, name="l", model=orig.model_dir)
    assert res.layers == MOE_LAYERS and res.has_weights and res.top_k == 2
    got = per_sequence(imported_trace(db, "l"))
    want = per_sequence(orig.trace)
    order = groups["code"] + groups["prose"]  # data sets in the file's key order
    keys = ["code"] * 3 + ["prose"] * 4
    from safetensors import safe_open

    with safe_open(str(tmp_path / "tiny_00.safetensors"), framework="pt") as f:
        if list(f.keys()) == ["prose", "code"]:
            order, keys = groups["prose"] + groups["code"], ["prose"] * 4 + ["code"] * 3
    for g, i, key in zip(got, order, keys, strict=True):
        w = want[i]
        np.testing.assert_array_equal(g["experts"], w["experts"][:n])
        np.testing.assert_allclose(g["weights"], w["weights"][:n], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(g["token_ids"], w["token_ids"][:n])
        assert g["label"] == key


def test_moe_lrc_needs_model_and_refuses_bad_files(orig, tmp_path):
    lrc_files(orig, tmp_path)
    db = str(tmp_path / "imp.duckdb")
    proc = _cli("import", "moe-lrc", str(tmp_path), "--db", db, "--name", "x", "-q")
    _assert_one_line_exit_2(proc, "give --model")
    (tmp_path / "tiny_03.safetensors").write_bytes(b"not safetensors at all")
    proc = _cli(
        "import",
        "moe-lrc",
        str(tmp_path),
        "--db",
        db,
        "--name",
        "x",
        "-q",
        "--model",
        orig.model_dir,
    )
    _assert_one_line_exit_2(proc, "tiny_03.safetensors: not a safetensors file")
    assert store_dump(db) == {}
