"""Importing a trace: survey every file, then write whole sequences batch by batch.

Two passes over the reader's sequences. The survey checks every value (layer axis and top-k width
constant, ids in range, no −1 inside the top-k, no padding rows in an MoE layer) and decides which
layer columns are MoE layers (the dense ones are all-zero or all −1 slices) and how wide the top-k
is, so a malformed file stops the import before anything is written. The write pass sends batches
of whole sequences through the store's writer (one transaction each), skipping sequences already
stored, so an interrupted import resumes like a collection; `finish_run` then clusters the run.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from routescope.core.errors import InvalidParameterError, RoutescopeError
from routescope.core.protocols import RunWriter
from routescope.core.records import BatchRouting
from routescope.importers.base import (
    UNKNOWN_TOKEN,
    ImportedSequence,
    ImportFileError,
    ModelInfo,
    ReadOptions,
)
from routescope.importers.registry import get_format

#: route rows (token rows × MoE layers) per store transaction
FLUSH_ROWS = 1 << 20


@dataclass
class ImportResult:
    """What an import did."""

    run_id: str
    db: str
    format: str
    sequences_total: int
    sequences_skipped: int
    sequences_written: int
    tokens_written: int
    route_rows: int
    seconds: float
    layers: list[int]
    num_experts: int
    top_k: int
    has_weights: bool
    has_token_ids: bool

    @property
    def rows_per_second(self) -> float:
        return self.route_rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Survey:
    """Pass one: shape, checks and counts over every sequence of the import."""

    n_seq: int = 0
    n_tok: int = 0
    raw_layers: int | None = None
    raw_k: int | None = None
    layer_numbers: tuple[int, ...] | None = None
    explicit: bool | None = None
    has_weights: bool | None = None
    any_tokens: bool = False
    max_id: int = -1
    live: np.ndarray | None = None  # bool[L]: the column holds routing somewhere
    neg_any: np.ndarray | None = None  # bool[L, K]: −1 seen in a routed row
    neg_all: np.ndarray | None = None  # bool[L, K]: only −1 in every routed row
    first_pad: dict[int, str] = field(default_factory=dict)  # layer col → record with a pad row
    first_neg: dict[tuple[int, int], str] = field(default_factory=dict)
    first_where: str = ""

    def add(self, s: ImportedSequence) -> None:
        ex = np.asarray(s.experts)
        rec = f"{s.where}, {s.record}"
        if ex.ndim != 3:
            raise ImportFileError(
                s.where, s.record, "experts", f"expected [tokens, layers, k], got {list(ex.shape)}"
            )
        t, n_lay, k = ex.shape
        if self.raw_layers is None:
            self.raw_layers, self.raw_k = n_lay, k
            self.layer_numbers, self.explicit = s.layers, s.layers is not None
            self.has_weights = s.weights is not None
            self.live = np.zeros(n_lay, dtype=bool)
            self.neg_any = np.zeros((n_lay, k), dtype=bool)
            self.neg_all = np.ones((n_lay, k), dtype=bool)
            self.first_where = s.where
        if (n_lay, k) != (self.raw_layers, self.raw_k):
            raise ImportFileError(
                s.where,
                s.record,
                "experts",
                f"has {n_lay} layers x top-{k}, but {self.first_where} has "
                f"{self.raw_layers} x top-{self.raw_k}; import one model's traces at a time",
            )
        if s.layers != self.layer_numbers:
            raise ImportFileError(
                s.where, s.record, "layer", f"holds layers {s.layers}, others {self.layer_numbers}"
            )
        if (s.weights is not None) != self.has_weights:
            raise ImportFileError(
                s.where, s.record, "weights", "some records carry gate weights and others not"
            )
        if s.weights is not None and np.shape(s.weights) != ex.shape:
            raise ImportFileError(
                s.where,
                s.record,
                "weights",
                f"shape {list(np.shape(s.weights))} != {list(ex.shape)}",
            )
        for name in ("token_ids", "positions", "phase"):
            val = getattr(s, name)
            if val is not None and len(val) != t:
                raise ImportFileError(
                    s.where, s.record, name, f"has {len(val)} entries for {t} routed tokens"
                )
        if s.token_ids is not None:
            self.any_tokens = True
        if t == 0:
            self.n_seq += 1
            return
        if int(ex.min()) < -1:
            raise ImportFileError(
                s.where, s.record, "experts", f"negative expert id {int(ex.min())}"
            )
        neg = ex == -1
        pad = np.all(neg, axis=2) | (np.all(ex == 0, axis=2) if k > 1 else False)  # [T, L]
        routed = ~pad
        assert self.live is not None and self.neg_any is not None and self.neg_all is not None
        self.live |= routed.any(axis=0)
        for col in np.flatnonzero(pad.any(axis=0) & routed.any(axis=0)):
            self.first_pad.setdefault(int(col), rec)
        neg_routed = neg & routed[:, :, None]
        self.neg_any |= neg_routed.any(axis=0)
        has_rows = routed.any(axis=0)  # [L]
        all_neg = np.all(neg | pad[:, :, None], axis=0)  # [L, K]
        self.neg_all &= np.where(has_rows[:, None], all_neg, True)
        for col, j in zip(*np.nonzero(neg_routed.any(axis=0)), strict=True):
            self.first_neg.setdefault((int(col), int(j)), rec)
        self.max_id = max(self.max_id, int(ex.max()))
        self.n_seq += 1
        self.n_tok += t


@dataclass
class _Plan:
    """What pass one decided: the MoE layer columns, their model layer numbers, the top-k."""

    cols: list[int]
    layers: list[int]
    k: int
    num_layers: int
    num_experts: int
    experts_inferred: bool


def _plan(survey: _Survey, opts: ReadOptions, fmt_experts: int | None) -> _Plan:
    if survey.n_seq == 0 or survey.live is None:
        raise RoutescopeError("the trace holds no sequences; nothing to import")
    assert survey.raw_layers is not None and survey.raw_k is not None
    model = opts.model
    live = survey.live
    n_raw = survey.raw_layers
    if survey.explicit:
        numbers = list(survey.layer_numbers or ())
        cols = [c for c in range(n_raw) if live[c]]
        layers = [numbers[c] for c in cols]
        if model is not None:
            extra = [x for x in layers if x not in model.moe_layers]
            if extra:
                raise InvalidParameterError(
                    f"the trace routes layer(s) {extra}, which model {model.model_id} has as "
                    f"dense layers (MoE layers: {list(model.moe_layers)}); is --model right?"
                )
        num_layers = model.num_layers if model is not None else max(numbers) + 1
    elif model is not None:
        moe = list(model.moe_layers)
        if n_raw == model.num_layers:
            cols, layers = moe, moe
            stray = [c for c in range(n_raw) if live[c] and c not in moe]
            if stray:
                raise InvalidParameterError(
                    f"the trace routes layer(s) {stray}, which model {model.model_id} has as "
                    f"dense layers (MoE layers: {moe}); is --model right?"
                )
        elif n_raw == len(moe):
            cols, layers = list(range(n_raw)), moe
        else:
            raise InvalidParameterError(
                f"the trace has {n_raw} layers, model {model.model_id} has {model.num_layers} "
                f"of which {len(moe)} are MoE layers; is --model right?"
            )
        num_layers = model.num_layers
    else:
        cols = [c for c in range(n_raw) if live[c]]
        layers = list(cols)
        num_layers = n_raw
    if not cols:
        raise RoutescopeError("every layer of the trace is empty (all 0 / −1): nothing to import")
    assert survey.neg_all is not None and survey.neg_any is not None
    width = survey.raw_k
    kept = [j for j in range(width) if not bool(np.all(survey.neg_all[cols, j]))]
    k = len(kept)
    if k == 0 or kept != list(range(k)):
        raise RoutescopeError(
            f"the top-k columns {kept} of {width} hold routing: expected padding (−1) only after "
            "the last routed expert"
        )
    for col in cols:
        for j in range(k):
            if survey.neg_any[col, j]:
                rec = survey.first_neg[(col, j)]
                raise RoutescopeError(f"{rec}: layer column {col} has −1 inside the top-{k}")
        if col in survey.first_pad and k > 1:
            raise RoutescopeError(
                f"{survey.first_pad[col]}: layer column {col} is an MoE layer but has tokens "
                "without routing (all 0 or −1)"
            )
    experts = opts.num_experts or (model.num_experts if model is not None else None) or fmt_experts
    inferred = experts is None
    if experts is None:
        experts = survey.max_id + 1
    if survey.max_id >= experts:
        raise RoutescopeError(
            f"the trace routes to expert {survey.max_id}, but the model has {experts} experts; "
            "check --num-experts / --model"
        )
    if opts.top_k is not None and opts.top_k != k:
        raise InvalidParameterError(f"the trace routes top-{k}, but --top-k is {opts.top_k}")
    return _Plan(cols, layers, k, num_layers, int(experts), inferred)


class _TokenTexts:
    """Token id → text through the tokenizer, decoded once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts: dict[int, str] = {}

    def update(self, ids: np.ndarray) -> dict[int, str] | None:
        if self.tokenizer is None:
            return None
        new = [int(i) for i in np.unique(ids) if int(i) >= 0 and int(i) not in self.texts]
        if new:
            self.texts.update(
                zip(new, self.tokenizer.batch_decode([[i] for i in new]), strict=True)
            )
        return self.texts


def _batch(
    seqs: list[ImportedSequence], plan: _Plan, has_weights: bool
) -> tuple[BatchRouting, list[np.ndarray]]:
    lengths = [s.num_tokens for s in seqs]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cols = np.asarray(plan.cols)
    experts = np.concatenate([np.asarray(s.experts)[:, cols, : plan.k] for s in seqs])
    weights = (
        np.concatenate([np.asarray(s.weights, dtype=np.float32)[:, cols, : plan.k] for s in seqs])
        if has_weights
        else None
    )
    ids = [
        np.full(s.num_tokens, UNKNOWN_TOKEN, dtype=np.int64)
        if s.token_ids is None
        else np.asarray(s.token_ids, dtype=np.int64)
        for s in seqs
    ]
    positions = np.concatenate(
        [
            np.arange(s.num_tokens, dtype=np.int32)
            if s.positions is None
            else np.asarray(s.positions, dtype=np.int32)
            for s in seqs
        ]
    )
    phase = np.concatenate(
        [
            np.zeros(s.num_tokens, dtype=np.uint8)
            if s.phase is None
            else np.asarray(s.phase, dtype=np.uint8)
            for s in seqs
        ]
    )
    batch = BatchRouting(
        seq_offsets=offsets,
        token_ids=np.concatenate(ids),
        positions=positions,
        phase=phase,
        experts=experts.astype(np.int16),
        weights=weights,
    )
    return batch, ids


def _files_identity(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [{"file": p.name, "bytes": p.stat().st_size if p.is_file() else None} for p in paths]


def import_trace(
    fmt: str,
    paths: Sequence[str | Path],
    *,
    db: str,
    name: str,
    model: str | ModelInfo | None = None,
    label: str | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    seq_len: int | None = None,
    store: RunWriter | None = None,
    flush_rows: int = FLUSH_ROWS,
    progress: Callable[[int, int], None] | None = None,
    after_batch: Callable[[int], None] | None = None,
    finishing: Callable[[], None] | None = None,
) -> ImportResult:
    """Import `paths` (files or directories) of format `fmt` as run `name` in `db`.

    model: a local model directory (only its config and tokenizer are read) or a `ModelInfo`;
    it fills the run's shape and token texts. num_experts/top_k: the shape where the trace and
    `--model` do not give it. Resumable: a re-run of the same command skips stored sequences.
    progress(sequences_done, sequences_total) after each batch; after_batch(i) after batch i;
    finishing() once every sequence is stored, before the run is clustered.
    """
    from routescope.importers.model import model_info
    from routescope.store.schema import job_size_key
    from routescope.store.writer import IntermittentStore

    info = get_format(fmt)
    files = [Path(p) for p in paths]
    if not files:
        raise InvalidParameterError("no trace files given")
    for p in files:
        if not p.exists():
            raise ImportFileError(p, None, None, "no such file or directory")
    for what, val in (("--num-experts", num_experts), ("--top-k", top_k), ("--seq-len", seq_len)):
        if val is not None and val < 1:
            raise InvalidParameterError(f"{what} must be at least 1, got {val}")
    minfo = model_info(model) if isinstance(model, str) else model
    opts = ReadOptions(
        label=label, num_experts=num_experts, top_k=top_k, seq_len=seq_len, model=minfo
    )
    reader = info.reader()
    fmt_meta: dict[str, Any] = {}

    def sequences() -> Iterator[ImportedSequence]:
        for s in reader(files, opts):
            if "num_experts" in s.extra:
                fmt_meta["num_experts"] = s.extra["num_experts"]
            if "load_counts" in s.extra:
                fmt_meta["load_counts"] = s.extra["load_counts"]
                continue
            yield s

    survey = _Survey()
    for s in sequences():
        survey.add(s)
    if "load_counts" in fmt_meta and survey.n_seq == 0:
        from routescope.importers.loadonly import write_load_only

        return write_load_only(info.name, files, fmt_meta["load_counts"], db, name, opts, store)
    plan = _plan(survey, opts, fmt_meta.get("num_experts"))
    has_weights = bool(survey.has_weights)
    run_id = name
    config = {
        "import_format": info.name,
        "files": _files_identity(files),
        "label": label,
        "seq_len": seq_len,
        "num_experts": plan.num_experts,
        "num_experts_inferred": plan.experts_inferred,
        "has_token_ids": survey.any_tokens,
        "trace_layer_columns": plan.cols,
    }
    writer: RunWriter = IntermittentStore(db) if store is None else store
    start = time.perf_counter()
    texts = _TokenTexts(minfo.tokenizer if minfo is not None else None)
    written = tokens = rows = 0
    try:
        writer.create_or_resume_run(
            run_id,
            name=name,
            model_id=minfo.model_id if minfo is not None else f"{info.name}-trace",
            family=minfo.family if minfo is not None else None,
            num_layers=plan.num_layers,
            moe_layers=plan.layers,
            num_experts=plan.num_experts,
            top_k=plan.k,
            num_shared_experts=minfo.num_shared_experts if minfo is not None else 0,
            norm_topk_prob=minfo.norm_topk_prob if minfo is not None else None,
            config=config,
            versions=_versions(),
            source=info.name,
            has_weights=has_weights,
        )
        writer.set_meta(job_size_key(run_id), {"sequences": survey.n_seq})
        stored = writer.stored_seq_ids(run_id)
        pending: list[ImportedSequence] = []
        pending_ids: list[int] = []
        pending_rows = 0
        n_batches = 0

        def flush() -> None:
            nonlocal pending, pending_ids, pending_rows, written, tokens, rows, n_batches
            if not pending:
                return
            batch, ids = _batch(pending, plan, has_weights)
            metas = [
                {
                    "seq_id": sid,
                    "prompt_set": s.prompt_set,
                    "prompt_id": s.prompt_id,
                    "label": label if label is not None else s.label,
                    "text": s.text if s.text is not None else _text(texts.tokenizer, tid),
                }
                for sid, s, tid in zip(pending_ids, pending, ids, strict=True)
            ]
            rows += writer.write_batch(run_id, metas, batch, texts.update(batch.token_ids))
            written += len(pending)
            tokens += batch.num_tokens
            if progress is not None:
                progress(len(stored) + written, survey.n_seq)
            if after_batch is not None:
                after_batch(n_batches)
            n_batches += 1
            pending, pending_ids, pending_rows = [], [], 0

        for sid, s in enumerate(sequences()):
            if sid in stored:
                continue
            pending.append(s)
            pending_ids.append(sid)
            pending_rows += s.num_tokens * len(plan.cols)
            if pending_rows >= flush_rows:
                flush()
        flush()
        writer.set_status(run_id, "complete")
        if finishing is not None:
            finishing()
        writer.finish_run(run_id)  # cluster the run's rows by layer for reading
    except KeyboardInterrupt:
        writer.set_status(run_id, "interrupted")
        raise RoutescopeError(
            f"interrupted: run {run_id} keeps the sequences written so far in {db}; re-run the "
            "same command to resume"
        ) from None
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            writer.set_status(run_id, "failed")
        raise
    finally:
        if store is None:
            writer.close()
    return ImportResult(
        run_id=run_id,
        db=db,
        format=info.name,
        sequences_total=survey.n_seq,
        sequences_skipped=len(stored),
        sequences_written=written,
        tokens_written=tokens,
        route_rows=rows,
        seconds=time.perf_counter() - start,
        layers=plan.layers,
        num_experts=plan.num_experts,
        top_k=plan.k,
        has_weights=has_weights,
        has_token_ids=survey.any_tokens,
    )


def _text(tokenizer: Any, ids: np.ndarray) -> str | None:
    if tokenizer is None or ids.size == 0 or int(ids.min()) < 0:
        return None
    return str(tokenizer.decode([int(i) for i in ids]))


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"routescope": version("routescope")}
    except PackageNotFoundError:
        return {}


def dumps_config(result: ImportResult) -> str:
    """The result as one JSON line (for `--json`)."""
    return json.dumps(result.__dict__, default=str)
