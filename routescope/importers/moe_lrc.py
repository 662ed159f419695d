"""moe-lrc (github.com/ljcleo/moe-lrc) router logits, routed by the model family's own rule.

moe-lrc's `11_merge.py` writes `output/merged/<model>_<LL>.safetensors` per decoder layer LL
(0-based; files exist only for MoE layers), keyed by data set, each value the router logits of
that data set's samples, bf16 [samples, sample_length, E] (2,048 × 512 in the paper); `02_merge.py`
writes the token ids as `data/merged/<model>.safetensors` with the same keys, [samples, length].
(A single sample's [T, E] is read too.) Top-k and gate weights follow from the logits by the
adapter's `route` for `--model`'s family (only its config is read); families whose routing needs
router parameters beyond the logits (DeepSeek-V3's selection bias) are refused. Each sample is a
sequence labelled by its data set key.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from routescope.core.errors import InvalidParameterError
from routescope.importers.base import (
    ImportedSequence,
    ImportFileError,
    ReadOptions,
    expand_paths,
)

_LAYER = re.compile(r"_(\d+)\.safetensors$")


def _open(path: Path) -> Any:
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ImportFileError(path, None, None, f"not a safetensors file ({exc})") from None


def read(paths: list[Path], opts: ReadOptions) -> Iterator[ImportedSequence]:
    model = opts.model
    if model is None or model.adapter is None:
        raise InvalidParameterError(
            "moe-lrc holds router logits: give --model DIR (a config of the model's family) so "
            "top-k and weights follow the family's routing rule"
        )
    files = expand_paths(paths, (".safetensors",), "moe-lrc")
    layer_files: dict[int, Path] = {}
    token_file: Path | None = None
    for f in files:
        m = _LAYER.search(f.name)
        if m:
            layer_files[int(m.group(1))] = f
        elif token_file is None:
            token_file = f
        else:
            raise ImportFileError(f, None, None, f"a second token file (also {token_file.name})")
    if not layer_files:
        raise ImportFileError(files[0], None, None, "no <model>_<layer>.safetensors logits files")
    order = sorted(layer_files)
    handles = {n: _open(layer_files[n]) for n in order}
    first = handles[order[0]]
    keys = list(first.keys())
    for n in order:
        if sorted(handles[n].keys()) != sorted(keys):
            raise ImportFileError(
                layer_files[n],
                None,
                None,
                f"data sets {sorted(handles[n].keys())} differ from {layer_files[order[0]].name}",
            )
    tokens: Any = _open(token_file) if token_file is not None else None
    token_keys = set(tokens.keys()) if tokens is not None else set()
    router = types.SimpleNamespace()  # the route needs no router parameters for these families
    for key in keys:
        shapes = {n: tuple(handles[n].get_slice(key).get_shape()) for n in order}
        shape0 = shapes[order[0]]
        for n, sh in shapes.items():
            if sh != shape0 or len(sh) not in (2, 3):
                raise ImportFileError(
                    layer_files[n],
                    f"key {key!r}",
                    key,
                    f"logits shape {list(sh)} (expected [samples, tokens, E] like {list(shape0)})",
                )
        if shape0[-1] != model.num_experts:
            raise ImportFileError(
                layer_files[order[0]],
                f"key {key!r}",
                key,
                f"{shape0[-1]} experts, model {model.model_id} has {model.num_experts}",
            )
        n_samples = shape0[0] if len(shape0) == 3 else 1
        tok = None
        if token_file is not None:  # and so tokens
            if key not in token_keys:
                raise ImportFileError(token_file, None, key, "missing from the token file")
            tok = tokens.get_slice(key)
            tshape = tuple(tok.get_shape())
            want = (n_samples, shape0[-2]) if len(shape0) == 3 else (shape0[0],)
            if tshape != want:
                raise ImportFileError(
                    token_file,
                    f"key {key!r}",
                    key,
                    f"token ids shape {list(tshape)}, expected {list(want)}",
                )
        for s in range(n_samples):
            ex, w = [], []
            for n in order:
                sl = handles[n].get_slice(key)
                logits = sl[s] if len(shape0) == 3 else sl[:]
                weights, idx = _route(model, logits, router, layer_files[n])
                ex.append(idx)
                w.append(weights)
            ids = None
            if tok is not None:
                ids = (tok[s] if len(shape0) == 3 else tok[:]).numpy().astype(np.int64)
            yield ImportedSequence(
                experts=np.stack(ex, axis=1),
                weights=np.stack(w, axis=1),
                token_ids=ids,
                where=str(layer_files[order[0]].parent),
                record=f"key {key!r} sample {s}",
                layers=tuple(order),
                prompt_set=key,
                prompt_id=str(s),
                label=key,
            )


def _route(model: Any, logits: Any, router: Any, path: Path) -> tuple[np.ndarray, np.ndarray]:
    import torch

    try:
        with torch.no_grad():
            weights, idx = model.adapter.route(logits.float(), router)
    except AttributeError as exc:
        raise InvalidParameterError(
            f"the {model.family} routing rule needs router parameters that router logits do not "
            f"carry ({exc}); import this model's routing from a trace that records top-k ids"
        ) from None
    if not torch.isfinite(logits).all():
        raise ImportFileError(path, None, None, "router logits hold NaN or infinity")
    return weights.float().numpy(), idx.numpy().astype(np.int64)
