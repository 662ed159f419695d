"""Load-only runs: an engine that kept only per-expert counts (SGLang's recorder in `stat` mode).

Such a run has no sequences; its counts live in the store's meta table under
`load_counts:<run_id>` ({"layers": [...], "counts": [[...], ...]}) and `runs.config` says
`"load_only": true`. `load_counts_frame` gives them in the columns of
`routescope.analysis.specialization.expert_load` (layer, expert, count, share), so the load
analyses can answer from them; every per-token analysis finds no tokens and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from routescope.core.errors import InvalidParameterError, RoutescopeError
from routescope.core.protocols import RunWriter
from routescope.importers.base import ReadOptions

if TYPE_CHECKING:
    from routescope.store.reader import StoreReader

LOAD_COUNTS_PREFIX = "load_counts:"


def load_counts_key(run_id: str) -> str:
    return LOAD_COUNTS_PREFIX + run_id


def write_load_only(
    fmt: str,
    files: Sequence[Path],
    counts: np.ndarray,
    db: str,
    name: str,
    opts: ReadOptions,
    store: RunWriter | None,
) -> Any:
    """Create a complete, sequence-less run holding per-(layer, expert) counts [L, E]."""
    from routescope.importers.driver import ImportResult
    from routescope.store.writer import IntermittentStore

    counts = np.asarray(counts, dtype=np.int64)
    model = opts.model
    n_raw, e = counts.shape
    if model is not None:
        if n_raw != model.num_layers:
            raise InvalidParameterError(
                f"the counts have {n_raw} layers, model {model.model_id} has {model.num_layers}"
            )
        layers = list(model.moe_layers)
    else:
        layers = [int(x) for x in np.flatnonzero(counts.sum(axis=1) > 0)]
    if not layers:
        raise RoutescopeError("the counts are all zero: nothing to import")
    experts = opts.num_experts or (model.num_experts if model is not None else e)
    if experts != e:
        raise InvalidParameterError(f"the counts have {e} experts, --num-experts is {experts}")
    top_k = opts.top_k or (model.top_k if model is not None else None)
    if top_k is None:
        raise InvalidParameterError(
            "a counts-only trace does not say the top-k: give --top-k (or --model)"
        )
    writer: RunWriter = IntermittentStore(db) if store is None else store
    try:
        writer.create_or_resume_run(
            name,
            name=name,
            model_id=model.model_id if model is not None else f"{fmt}-trace",
            family=model.family if model is not None else None,
            num_layers=model.num_layers if model is not None else n_raw,
            moe_layers=layers,
            num_experts=e,
            top_k=top_k,
            config={"import_format": fmt, "files": [p.name for p in files], "load_only": True},
            source=fmt,
            has_weights=False,
        )
        writer.set_meta(
            load_counts_key(name),
            {"layers": layers, "counts": counts[layers].tolist()},
        )
        writer.set_status(name, "complete")
    finally:
        if store is None:
            writer.close()
    return ImportResult(
        run_id=name,
        db=db,
        format=fmt,
        sequences_total=0,
        sequences_skipped=0,
        sequences_written=0,
        tokens_written=0,
        route_rows=0,
        seconds=0.0,
        layers=layers,
        num_experts=e,
        top_k=top_k,
        has_weights=False,
        has_token_ids=False,
    )


def load_counts_frame(store: StoreReader, run_id: str) -> pl.DataFrame | None:
    """(layer, expert, count, share) of a load-only run, or None for a run with routing."""
    value = store.get_meta(load_counts_key(run_id))
    if value is None:
        return None
    rows = []
    for layer, row in zip(value["layers"], value["counts"], strict=True):
        c = np.asarray(row, dtype=np.int64)
        total = c.sum()
        rows.append(
            pl.DataFrame(
                {
                    "layer": np.full(len(c), layer, dtype=np.int32),
                    "expert": np.arange(len(c), dtype=np.int32),
                    "count": c,
                    "share": c / total if total else np.zeros(len(c)),
                }
            )
        )
    return pl.concat(rows)
