"""Megatron-Core router tracing (`--moe-routing-trace-path`): one JSONL file per rank.

Each line is one router call: {"step", "stage", "block" ("decoder" or "mtp"), "layer", "rank",
"num_tokens", "topk", "top_indices" [num_tokens][topk]} (docs/formats.md); `layer` is the index in
`decoder.layers.<n>` (0-based). No token ids, no gate weights, no sequence boundaries: the tokens of
one router call are the flattened micro-batch. A sequence here is one forward pass of one rank: the
records of one (rank, step), split into micro-batches by the order the same layer repeats within
the step. MTP records (`block` = "mtp") are not decoder layers and are skipped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from routescope.importers.base import (
    ImportedSequence,
    ImportFileError,
    ReadOptions,
    check_int_array,
    expand_paths,
)

REQUIRED = ("step", "layer", "num_tokens", "topk", "top_indices")


def read(paths: list[Path], opts: ReadOptions) -> Iterator[ImportedSequence]:
    files = expand_paths(paths, (".jsonl",), "megatron")
    layers_all: set[int] = set()
    per_file = []
    for path in files:
        groups = _read_file(path)
        for g in groups.values():
            layers_all.update(g)
        per_file.append((path, groups))
    layers = tuple(sorted(layers_all))
    for path, groups in per_file:
        for (rank, step, mb), by_layer in sorted(groups.items()):
            rec = f"rank {rank} step {step}" + (f" micro-batch {mb}" if mb else "")
            missing = [x for x in layers if x not in by_layer]
            if missing:
                raise ImportFileError(path, rec, "layer", f"no record for layer(s) {missing}")
            counts = {x: len(by_layer[x][0]) for x in layers}
            if len(set(counts.values())) != 1:
                first = by_layer[layers[0]][1]
                raise ImportFileError(
                    path, first, "num_tokens", f"differs between layers of one pass: {counts}"
                )
            experts = np.stack([by_layer[x][0] for x in layers], axis=1)
            yield ImportedSequence(
                experts=experts,
                where=str(path),
                record=rec,
                layers=layers,
                prompt_set=f"rank{rank}",
                prompt_id=f"step{step}" + (f"/mb{mb}" if mb else ""),
            )


def _read_file(path: Path) -> dict[tuple[int, int, int], dict[int, tuple[np.ndarray, str]]]:
    """(rank, step, micro-batch) → layer → (top_indices [T, k], record name)."""
    groups: dict[tuple[int, int, int], dict[int, tuple[np.ndarray, str]]] = defaultdict(dict)
    seen: dict[tuple[int, int, int], int] = defaultdict(int)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFileError(path, None, None, f"cannot read ({exc})") from None
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        rec = f"line {i + 1}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ImportFileError(path, rec, None, f"not valid JSON ({exc.msg})") from None
        if not isinstance(r, dict):
            raise ImportFileError(path, rec, None, "a record must be a JSON object")
        for key in REQUIRED:
            if key not in r:
                raise ImportFileError(path, rec, key, "missing")
        if r.get("block", "decoder") != "decoder":
            continue
        try:
            step, layer = int(r["step"]), int(r["layer"])
            rank, n, k = int(r.get("rank", 0)), int(r["num_tokens"]), int(r["topk"])
        except (TypeError, ValueError):
            raise ImportFileError(
                path, rec, None, "step, layer, rank, num_tokens, topk must be integers"
            ) from None
        try:
            raw = np.asarray(r["top_indices"]) if r["top_indices"] else np.zeros((0, k), np.int64)
        except (ValueError, TypeError):
            raise ImportFileError(
                path, rec, "top_indices", "not a [num_tokens][topk] list of integers"
            ) from None
        idx = check_int_array(raw, path, rec, "top_indices", 2)
        if idx.shape != (n, k):
            raise ImportFileError(
                path, rec, "top_indices", f"shape {list(idx.shape)}, but num_tokens={n}, topk={k}"
            )
        mb = seen[(rank, step, layer)]
        seen[(rank, step, layer)] += 1
        groups[(rank, step, mb)][layer] = (idx, rec)
    return groups
