"""A run's model config and costs for the offloading what-if, found on this machine.

`model_config` reads a model's config.json where it already is (the demo model, a local
directory, or a Hugging Face cache snapshot; nothing is downloaded); `run_cost` turns a run's
`run_info` into the `OffloadCost` that `routescope simulate offload` and the dashboard's Prefetch
page use (the arithmetic is `routescope.core.costs.model_cost`). Config files only: no torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Unpack

from routescope.core.costs import CostOverrides, OffloadCost, model_cost

DEMO_IDS = ("demo", "routescope/demo")


def model_config(model_id: str | None, revision: str | None = None) -> dict[str, Any] | None:
    """The model's config.json as a dict when it is on this machine (the demo model, a local
    directory, or a Hugging Face cache snapshot), else None. Nothing is downloaded."""
    if not model_id:
        return None
    candidates: list[Path] = []
    if model_id in DEMO_IDS:
        from routescope.models.demo import DEMO_MODEL_PATH

        candidates.append(Path(DEMO_MODEL_PATH) / "config.json")
    path = Path(os.path.expanduser(model_id))
    candidates.append(path / "config.json")
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    )
    repo = hub / ("models--" + model_id.replace("/", "--"))
    snaps = repo / "snapshots"
    if revision and (snaps / revision).is_dir():
        candidates.append(snaps / revision / "config.json")
    ref = repo / "refs" / (revision or "main")
    if ref.is_file():
        candidates.append(snaps / ref.read_text().strip() / "config.json")
    if snaps.is_dir():
        candidates += sorted(snaps.glob("*/config.json"))
    for c in candidates:
        try:
            if c.is_file():
                return json.loads(c.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return None


def run_cost(info: Mapping[str, Any], **given: Unpack[CostOverrides]) -> OffloadCost:
    """The run's `OffloadCost` (`info`: its `run_info`): from its model's config where found,
    with any value `given` (`model_cost`'s keywords) in place of the config's."""
    config = model_config(info.get("model_id"), info.get("model_revision"))
    n_layers, k, e = len(info["moe_layers"]), int(info["top_k"]), int(info["num_experts"])
    return model_cost(config, n_layers, k, e, **given)
