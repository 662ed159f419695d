"""FLAME-MoE-Traces layout (the CMU-FLAME/FLAME-MoE-Traces dataset card, docs/formats.md).

    <model>/samples/000.parquet …          token_id int32, one row per token
    <model>/actives/iter_NNNN/layer_NN.parquet
                                           scores list<float16>[k] (router softmax probabilities
                                           of the top-k, sorted descending), indices list<int16>[k]

Row i of every actives file is token i of the samples files (concatenated in name order). Layers
are numbered from 1 in the file names (FLAME-MoE-290M: 9 layers, MoE layers 2–9, layer 1 dense),
so `layer_NN` is model layer NN − 1 here (0-based, as routescope numbers layers). The stream has no
sequence boundaries: it is cut into sequences of `--seq-len` tokens (default 2048). The scores are
stored as gate weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from routescope.importers.base import ImportedSequence, ImportFileError, ReadOptions

DEFAULT_SEQ_LEN = 2048
_LAYER = re.compile(r"layer_(\d+)\.parquet$")
_READ_ROWS = 1 << 16


def _classify(paths: list[Path]) -> tuple[list[Path], dict[int, Path]]:
    samples: list[Path] = []
    layers: dict[int, Path] = {}

    def add_layer(p: Path) -> None:
        m = _LAYER.search(p.name)
        assert m is not None
        n = int(m.group(1))
        if n in layers:
            raise ImportFileError(p, None, None, f"layer {n} given twice (also {layers[n]})")
        layers[n] = p

    for p in paths:
        if p.is_dir() and (p / "samples").is_dir() and (p / "actives").is_dir():
            samples += sorted((p / "samples").glob("*.parquet"))
            iters = sorted(d for d in (p / "actives").iterdir() if d.is_dir())
            if len(iters) != 1:
                names = ", ".join(d.name for d in iters) or "none"
                raise ImportFileError(
                    p / "actives",
                    None,
                    None,
                    f"holds iterations {names}; pass one: {p / 'samples'} {p / 'actives'}/iter_N",
                )
            for f in sorted(iters[0].glob("layer_*.parquet")):
                add_layer(f)
        elif p.is_dir():
            files = sorted(p.glob("*.parquet"))
            if not files:
                raise ImportFileError(p, None, None, "no .parquet files inside")
            for f in files:
                add_layer(f) if _LAYER.search(f.name) else samples.append(f)
        elif p.is_file():
            add_layer(p) if _LAYER.search(p.name) else samples.append(p)
        else:
            raise ImportFileError(p, None, None, "no such file or directory")
    if not layers:
        raise ImportFileError(paths[0], None, None, "no actives layer_NN.parquet files given")
    return samples, layers


class _RowStream:
    """Rows of one column group read across files in order, handed out n at a time."""

    def __init__(self, files: list[Path], columns: list[str]) -> None:
        self.files, self.columns = files, columns
        self._batches = self._iter()
        self._buf: list[pa.RecordBatch] = []
        self._have = 0

    def _iter(self) -> Iterator[tuple[Path, pa.RecordBatch]]:
        for f in self.files:
            for b in pq.ParquetFile(f).iter_batches(batch_size=_READ_ROWS, columns=self.columns):
                yield f, b

    def take(self, n: int) -> pa.Table:
        while self._have < n:
            try:
                _, b = next(self._batches)
            except StopIteration:
                break
            self._buf.append(b)
            self._have += b.num_rows
        table = pa.Table.from_batches(self._buf) if self._buf else None
        if table is None:
            raise AssertionError("row counts were checked before reading")
        head, rest = table.slice(0, n), table.slice(n)
        self._buf = rest.to_batches()
        self._have = rest.num_rows
        return head


def _rows(path: Path, columns: list[str]) -> int:
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportFileError(path, None, None, f"not a Parquet file ({exc})") from None
    names = pf.schema_arrow.names
    for c in columns:
        if c not in names:
            raise ImportFileError(path, "schema", c, f"missing (columns: {', '.join(names)})")
    return int(pf.metadata.num_rows)


def _fixed(col: pa.ChunkedArray, path: Path, first_row: int, name: str) -> np.ndarray:
    """A list column of equal-length lists → [n, k] numpy."""
    arr = col.combine_chunks()
    if not pa.types.is_list(arr.type) and not pa.types.is_large_list(arr.type):
        raise ImportFileError(path, "schema", name, f"expected a list column, got {arr.type}")
    if arr.null_count:
        raise ImportFileError(path, f"row {first_row}..", name, "null values")
    offsets = np.asarray(arr.offsets)
    lengths = np.diff(offsets)
    if len(lengths) and (lengths != lengths[0]).any():
        bad = int(np.flatnonzero(lengths != lengths[0])[0])
        raise ImportFileError(
            path,
            f"row {first_row + bad}",
            name,
            f"has {lengths[bad]} entries, row {first_row} {lengths[0]}",
        )
    k = int(lengths[0]) if len(lengths) else 0
    values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(
        zero_copy_only=False
    )
    return values.reshape(len(lengths), k)


def read(paths: list[Path], opts: ReadOptions) -> Iterator[ImportedSequence]:
    samples, layers = _classify(paths)
    seq_len = opts.seq_len or DEFAULT_SEQ_LEN
    order = sorted(layers)
    counts = {layers[n]: _rows(layers[n], ["scores", "indices"]) for n in order}
    n_rows = counts[layers[order[0]]]
    sample_rows = sum(_rows(f, ["token_id"]) for f in samples)
    for f, c in counts.items():
        if c != n_rows:
            raise ImportFileError(f, None, None, f"has {c} rows, {layers[order[0]].name} {n_rows}")
    if samples and sample_rows < n_rows:
        raise ImportFileError(
            samples[-1],
            None,
            "token_id",
            f"the samples hold {sample_rows} tokens, the actives {n_rows}",
        )
    streams = [_RowStream([layers[n]], ["scores", "indices"]) for n in order]
    tokens = _RowStream(samples, ["token_id"]) if samples else None
    model_layers = tuple(n - 1 for n in order)
    for s, start in enumerate(range(0, n_rows, seq_len)):
        n = min(seq_len, n_rows - start)
        ex, w = [], []
        for num, stream in zip(order, streams, strict=True):
            t = stream.take(n)
            idx = _fixed(t.column("indices"), layers[num], start, "indices")
            sc = _fixed(t.column("scores"), layers[num], start, "scores").astype(np.float32)
            if idx.shape != sc.shape:
                raise ImportFileError(
                    layers[num], f"row {start}..", "indices", "lists differ in length from scores"
                )
            if idx.dtype.kind not in "iu":
                raise ImportFileError(
                    layers[num], "schema", "indices", f"not integers ({idx.dtype})"
                )
            if (np.diff(sc, axis=1) > 0).any():  # rank order = scores descending
                o = np.argsort(-sc, axis=1, kind="stable")
                idx, sc = np.take_along_axis(idx, o, 1), np.take_along_axis(sc, o, 1)
            ex.append(idx.astype(np.int64))
            w.append(sc)
        ids = None
        if tokens is not None:
            ids = tokens.take(n).column("token_id").to_numpy().astype(np.int64)
        yield ImportedSequence(
            experts=np.stack(ex, axis=1),
            weights=np.stack(w, axis=1),
            token_ids=ids,
            where=str(layers[order[0]].parent),
            record=f"rows {start}..{start + n - 1}",
            layers=model_layers,
            prompt_set=layers[order[0]].parent.name,
            prompt_id=str(s),
        )
