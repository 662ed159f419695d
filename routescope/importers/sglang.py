"""SGLang: returned routing (`meta_info.routed_experts`) and the expert-distribution recorder.

Verified layouts (docs/formats.md):

- Returned routing (`--enable-return-routed-experts`, request `return_routed_experts: true`):
  `meta_info.routed_experts` is base64 of the raw bytes of an int32 tensor [tokens, layers, top_k]
  (no shape in the payload), for prompt + completion − 1 tokens (the last generated token is never
  fed). Token ids are not in the response: `input_ids` / `output_ids` are read when the user saved
  them beside it. Reshaping needs the layer count and top-k: `--model`, or `--top-k` (the layers
  then follow from the size). `meta_info.routed_experts_start_len` (a prompt-start offset) is read.
- Recorder dumps (`/start_expert_distribution_record` … `/dump_expert_distribution_record`), mode
  `per_token`: one `.pt` per rank, {records: [{forward_pass_id, rank, input_ids, positions,
  extend_seq_lens, forward_mode, topk_ids_of_layer [layers, tokens, 8] (−1 padded)}, …],
  last_physical_to_logical_map [layers, physical experts]}. Loaded with
  `torch.load(weights_only=True)`. Forward passes hold batches of requests without request ids, so
  sequences are rebuilt by position continuity (a token at position p continues the open sequence
  that ended at p − 1, oldest first); ids are physical and mapped to logical experts.
- Mode `stat`: {rank, logical_count [steps, layers, experts], …}: counts only, a load-only run.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from routescope.importers.base import (
    DECODE,
    ImportedSequence,
    ImportFileError,
    ReadOptions,
    expand_paths,
    json_records,
    token_array,
)

SUFFIXES = (".pt", ".json", ".jsonl")
#: ForwardMode.DECODE in sglang/srt/model_executor/forward_batch_info.py (EXTEND=1, DECODE=2, …)
FORWARD_DECODE = 2


def read(paths: list[Path], opts: ReadOptions) -> Iterator[ImportedSequence]:
    for path in expand_paths(paths, SUFFIXES, "sglang"):
        if path.name.lower().endswith(".pt"):
            yield from _read_dump(path)
        else:
            yield from _read_json(path, opts)


# ---- returned routing ---------------------------------------------------------------------------
def _read_json(path: Path, opts: ReadOptions) -> Iterator[ImportedSequence]:
    for where, resp in json_records(path):
        yield _response(path, where, resp, opts)


def _response(path: Path, rec: str, resp: Any, opts: ReadOptions) -> ImportedSequence:
    if not isinstance(resp, dict) or not isinstance(resp.get("meta_info"), dict):
        raise ImportFileError(path, rec, "meta_info", "missing (expected a /generate response)")
    meta = resp["meta_info"]
    enc = meta.get("routed_experts")
    if not isinstance(enc, str):
        raise ImportFileError(
            path,
            rec,
            "meta_info.routed_experts",
            "missing (start the server with --enable-return-routed-experts and ask "
            "return_routed_experts)",
        )
    try:
        flat = np.frombuffer(base64.b64decode(enc, validate=True), dtype=np.int32)
    except (binascii.Error, ValueError) as exc:
        raise ImportFileError(
            path, rec, "meta_info.routed_experts", f"not base64 int32 ({exc})"
        ) from None
    prompt = (
        token_array(resp.get("input_ids"), path, rec, "input_ids") if "input_ids" in resp else None
    )
    output = (
        token_array(resp.get("output_ids"), path, rec, "output_ids")
        if "output_ids" in resp
        else None
    )
    n_prompt = int(meta.get("prompt_tokens", len(prompt) if prompt is not None else 0))
    n_out = int(meta.get("completion_tokens", len(output) if output is not None else 0))
    start = int(meta.get("routed_experts_start_len", 0) or 0)
    model = opts.model
    k = opts.top_k or (model.top_k if model is not None else None)
    n_layers = model.num_layers if model is not None else None
    if k is None:
        raise ImportFileError(
            path,
            rec,
            "meta_info.routed_experts",
            "has no shape: give --top-k (or --model) to reshape it",
        )
    rows = n_prompt + n_out - 1 - start
    if n_layers is None:
        n_layers = flat.size // max(rows * k, 1)
    if rows <= 0 or flat.size != rows * n_layers * k:
        raise ImportFileError(
            path,
            rec,
            "meta_info.routed_experts",
            f"holds {flat.size} ids, not {rows} tokens (prompt_tokens + completion_tokens − 1 − "
            f"start) x {n_layers} layers x top-{k}",
        )
    experts = flat.reshape(rows, n_layers, k).astype(np.int64)
    ids = None
    if prompt is not None and output is not None:
        ids = np.concatenate([prompt, output])[start : start + rows]
    positions = np.arange(start, start + rows, dtype=np.int64)
    return ImportedSequence(
        experts=experts,
        where=str(path),
        record=rec,
        token_ids=ids,
        positions=positions,
        phase=(positions >= n_prompt).astype(np.uint8) * DECODE,
        prompt_set=path.stem,
        prompt_id=str(meta.get("id", rec)),
    )


# ---- recorder dumps -----------------------------------------------------------------------------
def _load_pt(path: Path) -> Any:
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ImportFileError(
            path, None, None, f"cannot load with weights_only=True ({first})"
        ) from None


def _np(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _read_dump(path: Path) -> Iterator[ImportedSequence]:
    data = _load_pt(path)
    if not isinstance(data, dict):
        raise ImportFileError(path, None, None, "expected the recorder's dict")
    if "logical_count" in data:
        counts = _np(data["logical_count"])
        if counts.ndim != 3:
            raise ImportFileError(path, "stat dump", "logical_count", f"shape {list(counts.shape)}")
        yield ImportedSequence(
            experts=np.zeros((0, 1, 1), dtype=np.int64),
            where=str(path),
            record="stat dump",
            extra={"load_counts": counts.sum(axis=0).astype(np.int64)},
        )
        return
    if "records" not in data or "last_physical_to_logical_map" not in data:
        raise ImportFileError(
            path, None, "records", "missing: not a per_token or stat recorder dump"
        )
    p2l = _np(data["last_physical_to_logical_map"]).astype(np.int64)
    if p2l.ndim != 2:
        raise ImportFileError(
            path, None, "last_physical_to_logical_map", f"shape {list(p2l.shape)}"
        )
    n_logical = int(p2l.max()) + 1
    records = data["records"]
    if not isinstance(records, list):
        raise ImportFileError(path, None, "records", "expected a list")
    order = sorted(
        range(len(records)), key=lambda i: int(_field(path, records, i, "forward_pass_id"))
    )
    seqs: list[_Building] = []
    open_seqs: list[_Building] = []
    for i in order:
        r = records[i]
        rec = f"record {i} (forward pass {r.get('forward_pass_id')})"
        if "topk_ids_of_layer" not in r:
            raise ImportFileError(path, rec, "topk_ids_of_layer", "missing: not a per_token dump")
        topk = _np(r["topk_ids_of_layer"]).astype(np.int64)
        ids = token_array(_field(path, records, i, "input_ids"), path, rec, "input_ids")
        pos = token_array(_field(path, records, i, "positions"), path, rec, "positions")
        t = len(ids)
        if topk.ndim != 3 or topk.shape[1] != t or len(pos) != t:
            raise ImportFileError(
                path,
                rec,
                "topk_ids_of_layer",
                f"shape {list(topk.shape)} for {t} input_ids and {len(pos)} positions",
            )
        if topk.shape[0] != p2l.shape[0]:
            raise ImportFileError(
                path,
                rec,
                "topk_ids_of_layer",
                f"{topk.shape[0]} layers, the physical-to-logical map {p2l.shape[0]}",
            )
        if t == 0:
            continue
        if int(topk.max()) >= p2l.shape[1] or int(topk.min()) < -1:
            raise ImportFileError(
                path,
                rec,
                "topk_ids_of_layer",
                f"physical expert id outside 0..{p2l.shape[1] - 1}",
            )
        layer_idx = np.arange(topk.shape[0])[:, None, None]
        logical = np.where(topk >= 0, p2l[layer_idx, np.maximum(topk, 0)], -1)
        per_token = logical.transpose(1, 0, 2)  # [T, L, K]
        mode = int(r.get("forward_mode", 0) or 0)
        lens = r.get("extend_seq_lens")
        if mode == FORWARD_DECODE or not lens:
            segments = [(j, j + 1) for j in range(t)]
        else:
            lens = [int(x) for x in lens]
            if sum(lens) != t:
                raise ImportFileError(
                    path, rec, "extend_seq_lens", f"sum {sum(lens)} != {t} input_ids"
                )
            cuts = np.concatenate([[0], np.cumsum(lens)])
            segments = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]
        used: set[int] = set()
        for a, b in segments:
            first = int(pos[a])
            target = None
            if first > 0:
                for j, s in enumerate(open_seqs):
                    if j not in used and s.next_pos == first:
                        target = j
                        break
            if target is None:
                s = _Building(rec=rec)
                seqs.append(s)
                open_seqs.append(s)
                target = len(open_seqs) - 1
            used.add(target)
            open_seqs[target].add(per_token[a:b], ids[a:b], pos[a:b], mode == FORWARD_DECODE)
    for n, s in enumerate(seqs):
        yield ImportedSequence(
            experts=np.concatenate(s.experts),
            where=str(path),
            record=f"sequence {n} (from {s.rec})",
            token_ids=np.concatenate(s.ids),
            positions=np.concatenate(s.pos),
            phase=np.concatenate(s.phase),
            prompt_set=path.stem,
            prompt_id=str(n),
            extra={"num_experts": n_logical},
        )


def _field(path: Path, records: list, i: int, name: str) -> Any:
    r = records[i]
    if not isinstance(r, dict) or name not in r:
        raise ImportFileError(path, f"record {i}", name, "missing")
    return r[name]


class _Building:
    """A sequence being rebuilt from forward passes."""

    def __init__(self, rec: str) -> None:
        self.rec = rec
        self.experts: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []
        self.pos: list[np.ndarray] = []
        self.phase: list[np.ndarray] = []
        self.next_pos = 0

    def add(self, ex: np.ndarray, ids: np.ndarray, pos: np.ndarray, decode: bool) -> None:
        self.experts.append(ex)
        self.ids.append(ids)
        self.pos.append(pos)
        self.phase.append(np.full(len(ids), DECODE if decode else 0, dtype=np.uint8))
        self.next_pos = int(pos[-1]) + 1
