"""The import driver's survey and plan on hand-made sequences: dense layers, −1 padding, the
checks that stop a malformed trace before anything is written, and the vLLM / SGLang alignment
rules (tokens − 1 rows, prompt-start offset, position-continuity chaining)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from routescope.core.errors import RoutescopeError
from routescope.importers import import_trace
from routescope.importers.base import ImportedSequence, ImportFileError, ModelInfo, ReadOptions
from routescope.importers.driver import _plan, _Survey
from routescope.store.store import RoutingStore


def seq(experts, **kw) -> ImportedSequence:
    return ImportedSequence(
        experts=np.asarray(experts), where="f", record=kw.pop("record", "r"), **kw
    )


def routed(t: int, layers: int, k: int, dense=(), pad_to=None, seed=0) -> np.ndarray:
    """[t, layers, k] distinct ids 0..7 per row; dense columns all 0; −1 columns up to pad_to."""
    rng = np.random.default_rng(seed)
    ex = np.stack([rng.permutation(8)[:k] for _ in range(t * layers)]).reshape(t, layers, k)
    ex[:, list(dense), :] = 0
    if pad_to:
        ex = np.concatenate([ex, np.full((t, layers, pad_to - k), -1)], axis=2)
        ex[:, list(dense), :] = -1
    return ex


def plan_of(*seqs, opts=None):
    s = _Survey()
    for x in seqs:
        s.add(x)
    return _plan(s, opts or ReadOptions(), None)


def test_dense_columns_and_padding_are_dropped():
    p = plan_of(
        seq(routed(5, 4, 2, dense=[1], pad_to=8)), seq(routed(3, 4, 2, dense=[1], pad_to=8, seed=1))
    )
    assert p.cols == [0, 2, 3] and p.layers == [0, 2, 3] and p.k == 2
    assert p.num_experts == 8 and p.experts_inferred


def test_model_maps_engine_axis_to_moe_layers():
    model = ModelInfo("m", "qwen3_moe", 4, (0, 2, 3), 8, 2, 0, True)
    full = plan_of(seq(routed(4, 4, 2, dense=[1])), opts=ReadOptions(model=model))
    assert full.cols == [0, 2, 3] and full.layers == [0, 2, 3] and not full.experts_inferred
    moe_only = plan_of(seq(routed(4, 3, 2)), opts=ReadOptions(model=model))
    assert moe_only.cols == [0, 1, 2] and moe_only.layers == [0, 2, 3]
    with pytest.raises(RoutescopeError, match="has 5 layers"):
        plan_of(seq(routed(4, 5, 2)), opts=ReadOptions(model=model))
    with pytest.raises(RoutescopeError, match=r"routes layer\(s\) \[1\]"):
        plan_of(seq(routed(4, 4, 2)), opts=ReadOptions(model=model))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda ex: ex.__setitem__((2, 0, 1), -1), "−1 inside the top-2"),
        (lambda ex: ex.__setitem__((2, 0), 0), "tokens without routing"),
        (lambda ex: ex.__setitem__((0, 0, 0), -3), "negative expert id -3"),
    ],
)
def test_malformed_values_are_refused(corrupt, match):
    ex = routed(5, 3, 2)
    corrupt(ex)
    with pytest.raises(RoutescopeError, match=match):
        plan_of(seq(ex, record="request 7"))


def test_inconsistent_shapes_name_the_record():
    with pytest.raises(ImportFileError, match="f, b, field 'experts': has 3 layers x top-2"):
        plan_of(seq(routed(2, 4, 2)), seq(routed(2, 3, 2), record="b"))
    with pytest.raises(ImportFileError, match="field 'token_ids': has 3 entries for 2"):
        plan_of(seq(routed(2, 3, 2), token_ids=np.arange(3)))
    with pytest.raises(ImportFileError, match="field 'weights'"):
        plan_of(seq(routed(2, 3, 2), weights=np.ones((2, 3, 2))), seq(routed(2, 3, 2)))
    with pytest.raises(RoutescopeError, match="expert 7, but the model has 4"):
        plan_of(seq(routed(3, 2, 2)), opts=ReadOptions(num_experts=4))


def npy_b64(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def test_vllm_rows_align_with_tokens(tmp_path):
    """G routed rows (the docs' form) with an all-zero last row: that row is dropped; a
    prompt-start offset shifts positions and token ids; phases follow the prompt length."""
    ex = routed(6, 2, 2)  # prompt 4 + output 3 = 7 tokens, 6 routed
    resp = {
        "prompt_token_ids": [10, 11, 12, 13],
        "prompt_routed_experts": npy_b64(ex[1:4]),
        "routed_experts_prompt_start": 1,
        "choices": [
            {
                "token_ids": [14, 15, 16],
                "routed_experts": npy_b64(np.concatenate([ex[4:6], np.zeros((1, 2, 2), int)])),
            }
        ],
    }
    path = tmp_path / "r.json"
    path.write_text(json.dumps(resp))
    db = str(tmp_path / "x.duckdb")
    import_trace("vllm", [path], db=db, name="x")
    with RoutingStore(db, read_only=True) as store:
        tr = store.load_trace("x")
    assert tr.positions.tolist() == [1, 2, 3, 4, 5]
    assert tr.token_ids.tolist() == [11, 12, 13, 14, 15]
    assert tr.phase.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(tr.experts, ex[1:6])
    # more rows than tokens: refused, naming the field
    resp["choices"][0]["routed_experts"] = npy_b64(np.ones((9, 2, 2), np.int16))
    path.write_text(json.dumps(resp))
    with pytest.raises(
        ImportFileError, match=r"r.json, response choice 0, field 'routed_experts': has 12 rows"
    ):
        import_trace("vllm", [path], db=str(tmp_path / "y.duckdb"), name="y")
    assert not Path(tmp_path / "y.duckdb").exists()


def test_finishing_is_called_once_every_sequence_is_stored_before_clustering(tmp_path):
    """The CLI's bar says "clustering" from this call on: every sequence is stored by then and the
    run is not clustered yet; afterwards it is."""
    import duckdb

    resp = {"prompt_token_ids": [10, 11, 12], "prompt_routed_experts": npy_b64(routed(3, 2, 2))}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(resp))
    db = str(tmp_path / "x.duckdb")
    seen: list[tuple[int, str | None]] = []

    def finishing() -> None:
        con = duckdb.connect(db, read_only=True)
        try:
            n = con.execute("SELECT count(*) FROM tokens").fetchall()[0][0]
            layout = con.execute("SELECT layout FROM runs").fetchall()[0][0]
        finally:
            con.close()
        seen.append((n, layout))

    import_trace("vllm", [path], db=db, name="x", finishing=finishing)
    assert seen == [(3, None)]
    with RoutingStore(db, read_only=True) as store:
        assert store.run_info("x")["layout"] == "layer-major"


def test_sglang_chains_batched_decode_by_position(tmp_path):
    """Two requests prefilled together (lengths 3 and 3: the same next position), then decoded
    together for two steps: the i-th decode token goes to the i-th oldest open sequence."""
    import torch

    from routescope.importers.sglang import read

    def rec(fid, ids, pos, lens, mode, topk):
        return {
            "forward_pass_id": fid,
            "rank": 0,
            "input_ids": ids,
            "positions": pos,
            "extend_seq_lens": lens,
            "forward_mode": mode,
            "topk_ids_of_layer": torch.tensor(topk, dtype=torch.int32),
        }

    # one layer, top-1 padded to 2; the expert id encodes (request, position) for checking
    def col(pairs):
        return [[[r * 4 + p, -1] for r, p in pairs]]

    records = [
        rec(
            0,
            [1, 2, 3, 4, 5, 6],
            [0, 1, 2, 0, 1, 2],
            [3, 3],
            1,
            col([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]),
        ),
        rec(1, [7, 8], [3, 3], None, 2, col([(0, 3), (1, 3)])),
    ]
    torch.save(
        {"records": records, "last_physical_to_logical_map": torch.arange(8)[None, :]},
        tmp_path / "d_0.pt",
    )
    seqs = list(read([tmp_path / "d_0.pt"], ReadOptions()))
    assert [s.experts[:, 0, 0].tolist() for s in seqs] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [s.token_ids.tolist() for s in seqs] == [[1, 2, 3, 7], [4, 5, 6, 8]]
    assert [s.phase.tolist() for s in seqs] == [[0, 0, 0, 1], [0, 0, 0, 1]]
