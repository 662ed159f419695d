"""vLLM traces written by the test from a run routescope collected, imported back, compared.

vLLM's layout (docs/formats.md): routing for P + G − 1 positions of a request (the last generated
token is never fed), one slice per decoder layer with the dense layers' slices all zero, no gate
weights; offline arrays in an .npz, HTTP responses with base64 `.npy` blobs and a prompt-start
offset.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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

EXTRA_TOKEN = 7  # the token vLLM generated last: it has no routing (never fed)


@pytest.fixture(scope="module")
def orig(tmp_path_factory):
    return collect_original(tmp_path_factory.mktemp("orig"))


def engine_rows(seq: dict) -> np.ndarray:
    """[T, num_hidden_layers, k] as vLLM's capture buffer holds it: dense layer slices zero."""
    t, _, k = seq["experts"].shape
    rows = np.zeros((t, NUM_LAYERS, k), dtype=np.int16)
    rows[:, MOE_LAYERS, :] = seq["experts"]
    return rows


def vllm_request(seq: dict) -> dict[str, np.ndarray]:
    """One request: prompt = the prefill tokens, output = decode tokens + one never fed."""
    p = int((seq["phase"] == 0).sum())
    ids = seq["token_ids"]
    rows = engine_rows(seq)
    return {
        "prompt_token_ids": ids[:p],
        "output_token_ids": np.concatenate([ids[p:], [EXTRA_TOKEN]]),
        "prompt_routed_experts": rows[:p],
        "routed_experts": rows[p:],  # G − 1 rows
    }


def npy_b64(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def assert_same(got, want_seqs, *, token_ids=True, start=0):
    seqs = per_sequence(got)
    assert len(seqs) == len(want_seqs)
    for g, w in zip(seqs, want_seqs, strict=True):
        np.testing.assert_array_equal(g["experts"], w["experts"][start:])
        np.testing.assert_array_equal(g["positions"], w["positions"][start:])
        if token_ids:
            np.testing.assert_array_equal(g["token_ids"], w["token_ids"][start:])
            np.testing.assert_array_equal(g["phase"], w["phase"][start:])
    assert got.weights is None


def test_offline_npz_round_trip(orig, tmp_path):
    seqs = per_sequence(orig.trace)
    for i, s in enumerate(seqs):
        np.savez(tmp_path / f"req_{i:03d}.npz", **vllm_request(s))
    db = str(tmp_path / "imp.duckdb")
    res = import_trace("vllm", [tmp_path], db=db, name="v", model=orig.model_dir)
    assert res.layers == MOE_LAYERS and res.top_k == 2 and res.num_experts == 8
    assert not res.has_weights and res.sequences_written == len(seqs)
    got = imported_trace(db, "v")
    assert got.layers == tuple(MOE_LAYERS)
    assert_same(got, seqs)
    from routescope.store.store import RoutingStore

    with RoutingStore(db, read_only=True) as store:
        info = store.run_info("v")
        assert info["status"] == "complete"
        row = store.con.execute(
            "SELECT source, has_weights, layout FROM runs WHERE run_id='v'"
        ).fetchall()[0]
        assert row == ("vllm", False, "layer-major")
        nulls = store.con.execute(
            "SELECT count(*) FROM routes WHERE run_id='v' AND weights IS NULL"
        ).fetchall()[0][0]
        assert nulls == got.num_tokens * 3
        # --model gives token texts
        toks = store.con.execute(
            "SELECT token FROM tokens WHERE run_id='v' AND seq_id=0 ORDER BY pos"
        ).fetchall()
        assert [t[0] for t in toks[1:4]] == ["the", "cat", "sat"]


def test_http_json_with_prompt_start_offset_and_uint8(orig, tmp_path):
    """The HTTP form: base64 .npy (uint8) per choice, prompt routing at the response level,
    the first 2 prompt rows trimmed (routed_experts_prompt_start = 2)."""
    seqs = per_sequence(orig.trace)
    lines = []
    for i, s in enumerate(seqs):
        req = vllm_request(s)
        resp = {
            "id": f"cmpl-{i}",
            "prompt_token_ids": req["prompt_token_ids"].tolist(),
            "prompt_routed_experts": npy_b64(req["prompt_routed_experts"][2:].astype(np.uint8)),
            "routed_experts_prompt_start": 2,
            "choices": [
                {
                    "index": 0,
                    "token_ids": req["output_token_ids"].tolist(),
                    "routed_experts": npy_b64(req["routed_experts"].astype(np.uint8)),
                }
            ],
        }
        lines.append(json.dumps(resp))
    (tmp_path / "responses.jsonl").write_text("\n".join(lines) + "\n")
    db = str(tmp_path / "imp.duckdb")
    import_trace("vllm", [tmp_path / "responses.jsonl"], db=db, name="h", model=orig.model_dir)
    assert_same(imported_trace(db, "h"), seqs, start=2)


def test_routing_only_npy_without_model_finds_dense_layer(orig, tmp_path):
    """No token ids, no --model: the dense layer (an all-zero column) is dropped, E is inferred
    from the ids, layers are the engine's column numbers."""
    seqs = per_sequence(orig.trace)
    for i, s in enumerate(seqs):
        np.save(tmp_path / f"r{i:02d}.npy", engine_rows(s))
    db = str(tmp_path / "imp.duckdb")
    res = import_trace("vllm", [tmp_path], db=db, name="n", num_experts=8)
    assert res.layers == MOE_LAYERS and not res.has_token_ids
    got = imported_trace(db, "n")
    assert_same(got, seqs, token_ids=False)
    assert (got.token_ids == -1).all()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from routescope.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "corrupt, fragment",
    [
        (lambda d: d.update(routed_experts=np.full((3, 4, 2), 1.5)), "field 'routed_experts'"),
        (lambda d: d.pop("routed_experts"), "field 'routed_experts': missing"),
        (
            lambda d: d.update(routed_experts=np.ones((50, 4, 2), dtype=np.int16)),
            "field 'routed_experts': has",
        ),
    ],
)
def test_malformed_npz_one_line_exit_2_store_unchanged(orig, tmp_path, corrupt, fragment):
    seqs = per_sequence(orig.trace)
    db = str(tmp_path / "imp.duckdb")
    good = tmp_path / "good"
    good.mkdir()
    np.savez(good / "a.npz", **vllm_request(seqs[0]))
    import_trace("vllm", [good], db=db, name="first")
    before = store_dump(db)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "a.npz", **vllm_request(seqs[1]))
    req = vllm_request(seqs[2])
    corrupt(req)
    np.savez(bad / "b.npz", **req)
    proc = _cli("import", "vllm", str(bad), "--db", db, "--name", "second", "-q")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "b.npz" in lines[0] and fragment in lines[0], lines[0]
    assert store_dump(db) == before


def test_malformed_json_names_line_and_field(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        json.dumps(
            {
                "prompt_token_ids": [1, 2],
                "choices": [
                    {"token_ids": [3], "routed_experts": npy_b64(np.zeros((2, 2, 2), np.int16))}
                ],
            }
        )
        + "\n{not json\n"
    )
    with pytest.raises(ImportFileError, match=r"r.jsonl, line 2: not valid JSON"):
        import_trace("vllm", [path], db=str(tmp_path / "x.duckdb"), name="x")
    assert not Path(tmp_path / "x.duckdb").exists()


def test_resume_skips_stored_sequences(orig, tmp_path):
    seqs = per_sequence(orig.trace)
    for i, s in enumerate(seqs):
        np.savez(tmp_path / f"req_{i:03d}.npz", **vllm_request(s))
    db = str(tmp_path / "imp.duckdb")

    def stop_after_first(i: int) -> None:
        if i == 0:
            raise KeyboardInterrupt

    with pytest.raises(Exception, match="re-run the same command"):
        import_trace(
            "vllm", [tmp_path], db=db, name="r", flush_rows=1, after_batch=stop_after_first
        )
    again = import_trace("vllm", [tmp_path], db=db, name="r")
    assert again.sequences_skipped == 1 and again.sequences_written == len(seqs) - 1
    assert_same(imported_trace(db, "r"), seqs)
