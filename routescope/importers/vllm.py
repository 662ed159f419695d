"""vLLM routed experts (`--enable-return-routed-experts`), one request (or choice) per sequence.

What vLLM records (verified in docs/formats.md): expert ids only (no gate weights), for every fed
token, so a request of P prompt and G generated tokens has routing for P + G − 1 positions (the
last generated token is never fed). The capture buffer has one slice per decoder layer, and the
slices of dense layers stay zero. Layouts read here:

- `.npz` (offline API, saved by the user): `prompt_token_ids` [P], `output_token_ids` (or
  `token_ids`) [G], and either `prompt_routed_experts` [P−start, L, K] plus `routed_experts`
  [R, L, K] (R = G − 1, or G), or one `routed_experts` [N, L, K] for the whole request; optional
  `prompt_start` (a prompt-start offset: routing begins at that position).
- `.npy`: one routing array [N, L, K], nothing else (token ids absent).
- `.json` / `.jsonl`: OpenAI-style responses. `prompt_token_ids` and `prompt_routed_experts` at the
  response level, `choices[i].token_ids` and `choices[i].routed_experts` per completion; each
  routing value a base64 `.npy` blob, an encoded object {data, shape, dtype[, encoding]} or nested
  lists; a prompt-start offset as `routed_experts_prompt_start` (or `start` in the encoded object).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from routescope.importers.base import (
    DECODE,
    ImportedSequence,
    ImportFileError,
    ReadOptions,
    as_int_array,
    check_int_array,
    expand_paths,
    json_records,
    token_array,
)

SUFFIXES = (".npz", ".npy", ".json", ".jsonl")


def read(paths: list[Path], opts: ReadOptions) -> Iterator[ImportedSequence]:
    """Every request of every file, in file order."""
    for path in expand_paths(paths, SUFFIXES, "vllm"):
        name = path.name.lower()
        if name.endswith(".npz"):
            yield from _read_npz(path)
        elif name.endswith(".npy"):
            yield from _read_npy(path)
        elif name.endswith((".json", ".jsonl")):
            yield from _read_json(path)
        else:
            raise ImportFileError(
                path, None, None, f"not a vLLM trace file ({', '.join(SUFFIXES)})"
            )


def _npload(path: Path) -> Any:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImportFileError(path, None, None, f"cannot read as numpy ({exc})") from None


def _read_npy(path: Path) -> Iterator[ImportedSequence]:
    arr = check_int_array(_npload(path), path, "array", "routed_experts", 3)
    yield ImportedSequence(experts=arr, where=str(path), record="array", prompt_set=path.stem)


def _read_npz(path: Path) -> Iterator[ImportedSequence]:
    data = _npload(path)
    if not hasattr(data, "files"):
        raise ImportFileError(path, None, None, "expected an .npz archive of named arrays")
    rec = "archive"
    prompt = (
        token_array(data["prompt_token_ids"], path, rec, "prompt_token_ids")
        if ("prompt_token_ids" in data.files)
        else None
    )
    out_key = next((k for k in ("output_token_ids", "token_ids") if k in data.files), None)
    output = token_array(data[out_key], path, rec, out_key) if out_key else None
    start = int(data["prompt_start"]) if "prompt_start" in data.files else 0
    prompt_routes = (
        check_int_array(data["prompt_routed_experts"], path, rec, "prompt_routed_experts", 3)
        if "prompt_routed_experts" in data.files
        else None
    )
    if "routed_experts" not in data.files:
        raise ImportFileError(path, rec, "routed_experts", "missing")
    routes = check_int_array(data["routed_experts"], path, rec, "routed_experts", 3)
    yield _request(path, rec, prompt, output, prompt_routes, routes, start, path.stem, "0")


def _read_json(path: Path) -> Iterator[ImportedSequence]:
    for where, resp in json_records(path):
        yield from _response(path, where, resp)


def _response(path: Path, rec: str, resp: Any) -> Iterator[ImportedSequence]:
    if not isinstance(resp, dict):
        raise ImportFileError(path, rec, None, "a response must be a JSON object")
    prompt = (
        token_array(resp["prompt_token_ids"], path, rec, "prompt_token_ids")
        if resp.get("prompt_token_ids") is not None
        else None
    )
    prompt_routes_raw = resp.get("prompt_routed_experts")
    prompt_routes = (
        None
        if prompt_routes_raw is None
        else as_int_array(prompt_routes_raw, path, rec, "prompt_routed_experts", 3)
    )
    start = _start(resp, prompt_routes_raw)
    choices = resp.get("choices")
    if choices is None:  # a bare request record {prompt_token_ids, token_ids, routed_experts}
        choices = [resp]
    if not isinstance(choices, list) or not choices:
        raise ImportFileError(path, rec, "choices", "expected a non-empty list")
    rid = str(resp.get("id", rec))
    for i, ch in enumerate(choices):
        where = f"{rec} choice {i}" if len(choices) > 1 or ch is not resp else rec
        if not isinstance(ch, dict):
            raise ImportFileError(path, where, "choices", "each choice must be an object")
        out_key = next(
            (k for k in ("token_ids", "output_token_ids") if ch.get(k) is not None), None
        )
        output = token_array(ch[out_key], path, where, out_key) if out_key else None
        raw = ch.get("routed_experts")
        if raw is None and prompt_routes is None:
            raise ImportFileError(
                path,
                where,
                "routed_experts",
                "missing (was the server started with --enable-return-routed-experts?)",
            )
        routes = None if raw is None else as_int_array(raw, path, where, "routed_experts", 3)
        ch_start = _start(ch, raw) if prompt_routes is None else start
        yield _request(path, where, prompt, output, prompt_routes, routes, ch_start, rid, str(i))


def _start(obj: dict, encoded: Any) -> int:
    for key in ("routed_experts_prompt_start", "prompt_start"):
        if obj.get(key) is not None:
            return int(obj[key])
    if isinstance(encoded, dict) and encoded.get("start") is not None:
        return int(encoded["start"])
    return 0


def _request(
    path: Path,
    rec: str,
    prompt: np.ndarray | None,
    output: np.ndarray | None,
    prompt_routes: np.ndarray | None,
    routes: np.ndarray | None,
    start: int,
    prompt_set: str,
    choice: str,
) -> ImportedSequence:
    """Align one request's routing with its tokens: rows cover positions start, start+1, …"""
    parts = [a for a in (prompt_routes, routes) if a is not None]
    if len(parts) == 2 and parts[0].shape[1:] != parts[1].shape[1:]:
        raise ImportFileError(
            path,
            rec,
            "routed_experts",
            f"shape {list(parts[1].shape)} does not match prompt_routed_experts "
            f"{list(parts[0].shape)}",
        )
    experts = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if (
        prompt is not None
        and prompt_routes is not None
        and len(prompt_routes) != len(prompt) - start
    ):
        raise ImportFileError(
            path,
            rec,
            "prompt_routed_experts",
            f"has {len(prompt_routes)} rows for {len(prompt)} prompt tokens from position {start}",
        )
    ids = None
    if prompt is not None or output is not None:
        ids = np.concatenate([a for a in (prompt, output) if a is not None])
    if start < 0 or (ids is not None and start > len(ids)):
        raise ImportFileError(path, rec, "prompt_start", f"offset {start} is out of range")
    n = len(experts)
    if ids is not None:
        avail = len(ids) - start
        if n > avail:
            raise ImportFileError(
                path,
                rec,
                "routed_experts",
                f"has {n} rows but the request has only {avail} tokens from position {start}",
            )
        if n == avail and n > 0 and experts.shape[2] > 1 and not experts[-1].any():
            n -= 1  # the last token was never fed: an all-zero row, not routing
            experts = experts[:n]
    positions = np.arange(start, start + n, dtype=np.int64)
    phase = None
    if prompt is not None:
        phase = (positions >= len(prompt)).astype(np.uint8) * DECODE
    return ImportedSequence(
        experts=experts,
        where=str(path),
        record=rec,
        token_ids=None if ids is None else ids[start : start + n],
        positions=positions,
        phase=phase,
        prompt_set=prompt_set,
        prompt_id=choice,
    )
