"""What every importer shares: the sequence a reader yields, the options it reads, its errors.

A reader turns one engine's files into `ImportedSequence`s, whole sequences in a fixed order (so
sequence ids are stable and a re-run skips what is stored). It reports the layer axis exactly as
the engine wrote it: padding (−1), dense layers as all-zero or all −1 slices, a top-k padded to a
fixed width. `routescope.importers.driver` decides, over the whole import, which layer columns are
MoE layers and how wide the top-k is, and checks every value before anything is written.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from routescope.core.errors import RoutescopeError
from routescope.core.registry import Named

PREFILL, DECODE = 0, 1

#: token id stored where a trace records none (the tokens table needs an integer)
UNKNOWN_TOKEN = -1


class ImportFileError(RoutescopeError):
    """A trace file is missing, unreadable or malformed: names the file, the record and the field."""

    def __init__(self, path: str | Path, record: str | None, field: str | None, problem: str):
        where = str(path)
        if record:
            where += f", {record}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")


@dataclass
class ModelInfo:
    """What `--model` tells an importer: the routing shape and, if present, a tokenizer.

    adapter: the family adapter (for `route` on router logits); tokenizer may be None.
    """

    model_id: str
    family: str
    num_layers: int
    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    num_shared_experts: int
    norm_topk_prob: bool | None
    adapter: Any = None
    tokenizer: Any = None


@dataclass
class ReadOptions:
    """The command-line facts a reader may need (each None when not given)."""

    label: str | None = None
    num_experts: int | None = None
    top_k: int | None = None
    seq_len: int | None = None
    model: ModelInfo | None = None


@dataclass
class ImportedSequence:
    """One whole sequence as a trace file holds it (before layer and top-k normalisation).

    experts:   int[T, L_raw, K_raw]  expert ids as written (logical ids; −1 padding allowed)
    weights:   float[T, L_raw, K_raw] or None
    token_ids: int[T] or None (absent in the trace)
    positions: int[T] or None (0..T−1)
    phase:     uint8[T] or None (all prefill)
    layers:    model layer number of each raw layer column, or None when the columns are the
               engine's own layer axis (mapped with --model, or by finding the dense columns)
    where/record: file and record, for error messages.
    """

    experts: np.ndarray
    where: str
    record: str
    weights: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    positions: np.ndarray | None = None
    phase: np.ndarray | None = None
    layers: tuple[int, ...] | None = None
    prompt_set: str | None = None
    prompt_id: str | None = None
    label: str | None = None
    text: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.experts.shape[0])


class Reader(Protocol):
    """A format's reader: the files in, whole sequences out, always in the same order."""

    def __call__(self, paths: list[Path], opts: ReadOptions) -> Iterator[ImportedSequence]: ...


@dataclass(frozen=True)
class FormatInfo(Named):
    """One registry entry (`routescope.importers.registry`): name, one-line description, what
    files it takes, the module whose `read` is its reader."""

    name: str
    description: str
    files: str
    module: str
    has_weights: bool
    #: a format may carry a full answer that is not per-token routing (SGLang's stat dumps)
    notes: str = ""

    def reader(self) -> Reader:
        import importlib

        reader: Reader = importlib.import_module(self.module).read
        return reader


# ---- helpers the readers share ----------------------------------------------------------------
def expand_paths(paths: list[Path], suffixes: tuple[str, ...], fmt: str) -> list[Path]:
    """Files given, plus the files with one of `suffixes` inside directories given, sorted."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
            if not found:
                raise ImportFileError(
                    p, None, None, f"no {'/'.join(suffixes)} files inside for format {fmt}"
                )
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ImportFileError(p, None, None, "no such file or directory")
    return out


def json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, object) for each JSON object of a .json file (one document: an object or a list of
    them) or a .jsonl file (one document a line); `where` names the line and the list item for
    error messages."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportFileError(path, None, None, f"cannot read ({exc})") from None
    if path.name.lower().endswith(".jsonl"):
        docs = [(f"line {i + 1}", ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    else:
        docs = [("response", text)]
    for rec, raw in docs:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImportFileError(path, rec, None, f"not valid JSON ({exc.msg})") from None
        objs = obj if isinstance(obj, list) else [obj]
        for j, item in enumerate(objs):
            yield (rec if len(objs) == 1 else f"{rec} item {j}"), item


def as_int_array(
    value: Any, path: str | Path, record: str, field_name: str, ndim: int
) -> np.ndarray:
    """A routing array from a JSON value: nested lists, a base64 `.npy` blob, or an object
    {data (base64 or base85), shape, dtype}. Never unpickles (np.load allow_pickle=False)."""
    try:
        if isinstance(value, str):
            arr = np.load(io.BytesIO(base64.b64decode(value, validate=True)), allow_pickle=False)
        elif isinstance(value, Mapping):
            raw = value.get("data")
            shape = value.get("shape")
            if not isinstance(raw, str) or not isinstance(shape, list):
                raise ValueError("an encoded array needs 'data' (text) and 'shape' (list)")
            enc = value.get("encoding", "base64")
            data = base64.b85decode(raw) if enc == "base85" else base64.b64decode(raw)
            dtype = np.dtype(str(value.get("dtype", "int32")))
            arr = np.frombuffer(data, dtype=dtype).reshape([int(s) for s in shape])
        else:
            arr = np.asarray(value)
    except (ValueError, TypeError, binascii.Error, OSError, EOFError) as exc:
        raise ImportFileError(path, record, field_name, f"cannot decode ({exc})") from None
    return check_int_array(arr, path, record, field_name, ndim)


def check_int_array(
    arr: np.ndarray, path: str | Path, record: str, field_name: str, ndim: int
) -> np.ndarray:
    """`arr` as int64 with `ndim` dimensions, or one clear error."""
    arr = np.asarray(arr)
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.integer) or (arr.size == 0 and arr.dtype.kind == "f")
    ):
        raise ImportFileError(
            path, record, field_name, f"expected integers, got {arr.dtype} values"
        )
    if arr.ndim != ndim:
        raise ImportFileError(
            path, record, field_name, f"expected {ndim} dimensions, got shape {list(arr.shape)}"
        )
    return arr.astype(np.int64, copy=False)


def token_array(value: Any, path: str | Path, record: str, field_name: str) -> np.ndarray:
    """A 1-D list of token ids."""
    return check_int_array(
        np.asarray(value if value is not None else []), path, record, field_name, 1
    )
