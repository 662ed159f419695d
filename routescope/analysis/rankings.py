"""Per-layer expert rankings as pruning and offloading tools take them: one JSON line per layer.

A localization result (`localize`: column `score`) or a load table (`expert_load`: columns
`count`, `share`) becomes, for each MoE layer, the list of its experts ordered by that score, most
important first (ties by expert id), with the scores beside them:

    {"layer": 3, "metric": "score", "experts": [17, 2, 40, ...], "scores": [0.31, 0.22, ...]}

A pruning tool keeps a prefix of `experts` (or drops a suffix); `top` cuts each list.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from routescope.core.errors import InvalidParameterError

#: the score column used when none is named, in order of preference
SCORE_COLUMNS = ("score", "share", "count")


def expert_ranking(
    frame: pl.DataFrame,
    score: str | None = None,
    top: int | None = None,
    descending: bool = True,
) -> list[dict[str, Any]]:
    """One record per layer (ascending): its experts ordered by `score` (default: the first of
    score, share, count present), highest first unless `descending` is False."""
    for col in ("layer", "expert"):
        if col not in frame.columns:
            raise InvalidParameterError(
                f"a ranking needs columns layer and expert (a localize or expert_load result); "
                f"got {frame.columns}"
            )
    if score is None:
        score = next((c for c in SCORE_COLUMNS if c in frame.columns), None)
        if score is None:
            raise InvalidParameterError(
                f"no score column to rank by ({', '.join(SCORE_COLUMNS)}); name one"
            )
    elif score not in frame.columns:
        raise InvalidParameterError(f"no column {score!r} to rank by; columns are {frame.columns}")
    if top is not None and top < 1:
        raise InvalidParameterError(f"top must be at least 1, got {top}")
    key = pl.col(score).cast(pl.Float64)
    ordered = frame.select(
        pl.col("layer").cast(pl.Int64),
        pl.col("expert").cast(pl.Int64),
        pl.when(key.is_nan()).then(None).otherwise(key).alias("_s"),
    ).sort(["layer", "_s", "expert"], descending=[False, descending, False], nulls_last=True)
    out = []
    for (layer,), group in ordered.group_by(["layer"], maintain_order=True):
        g = group if top is None else group.head(top)
        out.append(
            {
                "layer": int(layer),
                "metric": score,
                "experts": [int(x) for x in g["expert"]],
                "scores": [None if s is None or math.isnan(s) else float(s) for s in g["_s"]],
            }
        )
    return out


def write_expert_ranking(
    frame: pl.DataFrame,
    path: str | Path,
    score: str | None = None,
    top: int | None = None,
    descending: bool = True,
) -> int:
    """Write `expert_ranking(frame, …)` to `path` as JSONL; returns the number of layers written."""
    records = expert_ranking(frame, score=score, top=top, descending=descending)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records))
    return len(records)
