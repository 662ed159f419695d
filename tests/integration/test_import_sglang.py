"""SGLang traces written by the test from a collected run, imported back, compared.

Recorder `per_token` dumps (one per rank; batched forward passes without request ids; physical
expert ids with replicas; top-k padded to 8 with −1; dense layers all −1), the returned routing
(base64 int32, no shape, prompt + completion − 1 tokens) and `stat` dumps (counts only).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from import_helpers import (
    MOE_LAYERS,
    NUM_LAYERS,
    collect_original,
    imported_trace,
    per_sequence,
    store_dump,
)

from routescope.importers import import_trace
from routescope.importers.base import ImportFileError
from routescope.importers.loadonly import load_counts_frame
from routescope.store.store import RoutingStore

#: physical experts 0..7 are logical 0..7; physical 8 and 9 are replicas of logical 3 and 5
P2L = np.array([0, 1, 2, 3, 4, 5, 6, 7, 3, 5])
REPLICA = {3: 8, 5: 9}


@pytest.fixture(scope="module")
def orig(tmp_path_factory):
    return collect_original(tmp_path_factory.mktemp("orig"))


def physical(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Logical ids → physical ids, a replica chosen at random where one exists."""
    out = rows.copy()
    for logical, phys in REPLICA.items():
        hit = (rows == logical) & (rng.random(rows.shape) < 0.5)
        out[hit] = phys
    return out


def recorder_dump(seqs: list[dict], rank: int, rng: np.random.Generator) -> dict:
    """What `_DetailAccumulator.dump` writes for these requests served as one batch: a prefill
    (extend) pass, then decode passes of one token per running request."""
    prefill = [int((s["phase"] == 0).sum()) for s in seqs]
    passes = [[(i, 0, prefill[i]) for i in range(len(seqs))]]
    steps = max(len(s["phase"]) - p for s, p in zip(seqs, prefill, strict=True))
    for d in range(steps):
        passes.append(
            [(i, p + d, p + d + 1) for i, p in enumerate(prefill) if p + d < len(seqs[i]["phase"])]
        )
    records = []
    for fid, parts in enumerate(passes):
        ids, pos, topk = [], [], []
        for i, a, b in parts:
            s = seqs[i]
            ids += s["token_ids"][a:b].tolist()
            pos += s["positions"][a:b].tolist()
            rows = np.full((b - a, NUM_LAYERS, 8), -1, dtype=np.int64)
            rows[:, MOE_LAYERS, :2] = physical(s["experts"][a:b].astype(np.int64), rng)
            topk.append(rows)
        decode = fid > 0
        records.append(
            {
                "forward_pass_id": fid,
                "rank": rank,
                "gatherer_key": "primary",
                "input_ids": ids,
                "positions": pos,
                "extend_seq_lens": None if decode else [b - a for _, a, b in parts],
                "forward_mode": 2 if decode else 1,
                "topk_ids_of_layer": torch.from_numpy(
                    np.concatenate(topk).transpose(1, 0, 2).copy()
                ).int(),
                "misc_objects": [],
                "global_physical_count": torch.zeros(NUM_LAYERS, len(P2L), dtype=torch.int32),
            }
        )
    rng.shuffle(records)  # the importer orders by forward_pass_id
    p2l = torch.from_numpy(np.tile(P2L, (NUM_LAYERS, 1)))
    return {"records": records, "last_physical_to_logical_map": p2l}


def test_per_token_dumps_two_ranks_round_trip(orig, tmp_path):
    seqs = per_sequence(orig.trace)
    rng = np.random.default_rng(0)
    torch.save(recorder_dump(seqs[:4], 0, rng), tmp_path / "expert_distribution_recorder_1.5_0.pt")
    torch.save(recorder_dump(seqs[4:], 1, rng), tmp_path / "expert_distribution_recorder_1.5_1.pt")
    db = str(tmp_path / "imp.duckdb")
    res = import_trace("sglang", [tmp_path], db=db, name="s")
    assert res.layers == MOE_LAYERS and res.num_experts == 8 and res.top_k == 2
    got = per_sequence(imported_trace(db, "s"))
    assert len(got) == len(seqs)
    for g, w in zip(got, seqs, strict=True):
        for key in ("experts", "token_ids", "positions", "phase"):
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_returned_routing_json_round_trip(orig, tmp_path):
    seqs = per_sequence(orig.trace)
    lines = []
    for i, s in enumerate(seqs):
        p = int((s["phase"] == 0).sum())
        rows = np.zeros((len(s["phase"]), NUM_LAYERS, 2), dtype=np.int32)
        rows[:, MOE_LAYERS] = s["experts"]
        ids = s["token_ids"].tolist()
        out = ids[p:] + [9]  # the last generated token: never fed, no routing
        lines.append(
            json.dumps(
                {
                    "text": "",
                    "input_ids": ids[:p],
                    "output_ids": out,
                    "meta_info": {
                        "id": f"req{i}",
                        "prompt_tokens": p,
                        "completion_tokens": len(out),
                        "routed_experts": base64.b64encode(rows.tobytes()).decode(),
                    },
                }
            )
        )
    (tmp_path / "gen.jsonl").write_text("\n".join(lines) + "\n")
    db = str(tmp_path / "imp.duckdb")
    import_trace("sglang", [tmp_path / "gen.jsonl"], db=db, name="r", model=orig.model_dir)
    got = per_sequence(imported_trace(db, "r"))
    for g, w in zip(got, seqs, strict=True):
        for key in ("experts", "token_ids", "positions", "phase"):
            np.testing.assert_array_equal(g[key], w[key], err_msg=key)
    # without --model or --top-k the flat ids cannot be reshaped: one line says what to give
    with pytest.raises(ImportFileError, match="give --top-k"):
        import_trace("sglang", [tmp_path / "gen.jsonl"], db=db, name="r2")
    # --top-k alone: the layer count follows from the size, the dense layer is found
    res = import_trace("sglang", [tmp_path / "gen.jsonl"], db=db, name="r3", top_k=2)
    assert res.layers == MOE_LAYERS


def test_stat_dump_is_a_load_only_run(orig, tmp_path):
    from routescope.analysis.specialization import expert_load

    tr = orig.trace
    counts = np.zeros((NUM_LAYERS, 8), dtype=np.int64)
    for col, layer in enumerate(tr.layers):
        counts[layer] = np.bincount(tr.experts[:, col, :].ravel(), minlength=8)
    steps = np.stack([counts // 2, counts - counts // 2])
    torch.save(
        {
            "rank": 0,
            "logical_count": torch.from_numpy(steps),
            "average_utilization_rate_over_window": None,
        },
        tmp_path / "expert_distribution_recorder_1.5.pt",
    )
    db = str(tmp_path / "imp.duckdb")
    res = import_trace("sglang", [tmp_path], db=db, name="stat", top_k=2)
    assert res.sequences_written == 0 and res.layers == MOE_LAYERS
    with RoutingStore(db, read_only=True) as store:
        frame = load_counts_frame(store, "stat")
        assert store.run_info("stat")["status"] == "complete"
    want = expert_load(tr)
    assert frame.select("layer", "expert", "count").equals(want.select("layer", "expert", "count"))
    np.testing.assert_allclose(frame["share"].to_numpy(), want["share"].to_numpy())
    # the load analysis answers from the counts; per-token analyses refuse in one line
    import json

    from typer.testing import CliRunner

    from routescope.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["analyze", "specialization", "stat", "--db", db, "--json", "-q"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["load_summary"]
    assert [r["layer"] for r in summary if r["layer"] is not None] == list(MOE_LAYERS)
    for args in (["analyze", "consistency", "stat"], ["analyze", "cache", "stat"]):
        res = runner.invoke(app, [*args, "--db", db, "-q"])
        assert res.exit_code != 0 and "load-only" in str(res.exception)
        assert "\n" not in str(res.exception)


def test_malformed_dumps(orig, tmp_path):
    seqs = per_sequence(orig.trace)
    db = str(tmp_path / "imp.duckdb")
    import_trace("vllm", [_npy(tmp_path, seqs[0])], db=db, name="first")
    before = store_dump(db)
    bad = tmp_path / "bad"
    bad.mkdir()
    dump = recorder_dump(seqs[:2], 0, np.random.default_rng(1))
    victim = next(i for i, r in enumerate(dump["records"]) if r["forward_pass_id"] == 1)
    del dump["records"][victim]["positions"]
    torch.save(dump, bad / "expert_distribution_recorder_2.0_0.pt")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from routescope.cli import main; main()",
            "import",
            "sglang",
            str(bad),
            "--db",
            db,
            "--name",
            "second",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"_0.pt, record {victim}, field 'positions': missing" in lines[0]
    assert store_dump(db) == before
    # a file that needs full unpickling is refused, never unpickled
    torch.save({"records": [Evil()]}, bad / "expert_distribution_recorder_2.0_0.pt")
    with pytest.raises(ImportFileError, match="cannot load with weights_only=True"):
        import_trace("sglang", [bad], db=db, name="third")
    assert store_dump(db) == before


class Evil:
    """An object only a full unpickler could rebuild."""


def _npy(root, seq):
    path = root / "one.npy"
    rows = np.zeros((len(seq["phase"]), NUM_LAYERS, 2), dtype=np.int16)
    rows[:, MOE_LAYERS] = seq["experts"]
    np.save(path, rows)
    return path
