"""`RunWriter`: the writing side of a routing store, as the collection runner and importers see it.

Two stores implement it: `routescope.store.RoutingStore` / `IntermittentStore` (a DuckDB file) and
`routescope.store.parts.ParquetPartsStore` (a directory of Parquet parts, for shards). A writer
receives whole sequences only (`write_batch` is one transaction), so an interrupted job never
leaves half a sequence, and `stored_seq_ids` lets a re-run skip what is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NotRequired, Protocol, TypedDict, Unpack

import numpy as np

from routescope.core.records import BatchRouting


class RunFields(TypedDict):
    """What a run's row records (`RunWriter.create_or_resume_run`'s keywords): the model's
    routing shape, where it ran, the job's config and, for imports, the trace's source."""

    name: str | None
    model_id: str
    family: str | None
    num_layers: int
    moe_layers: Sequence[int]
    num_experts: int
    top_k: int
    num_shared_experts: NotRequired[int]
    norm_topk_prob: NotRequired[bool | None]
    model_revision: NotRequired[str | None]
    dtype: NotRequired[str | None]
    device: NotRequired[str | None]
    steering_id: NotRequired[str | None]
    config: NotRequired[Mapping[str, Any] | None]
    versions: NotRequired[Mapping[str, Any] | None]
    source: NotRequired[str]
    has_weights: NotRequired[bool]


class RunWriter(Protocol):
    """Create or resume a run, write batches of whole sequences, mark its status."""

    path: str

    def create_or_resume_run(self, run_id: str, **run: Unpack[RunFields]) -> bool:
        """Create the run's row, or reopen it; True when it already existed (a resumed job)."""
        ...

    def set_status(self, run_id: str, status: str) -> None: ...

    def set_meta(self, key: str, value: Any) -> None: ...

    def stored_seq_ids(self, run_id: str) -> set[int]: ...

    def write_batch(
        self,
        run_id: str,
        seqs_meta: Sequence[Mapping[str, Any]],
        batch: BatchRouting,
        token_texts: Mapping[int, str] | Sequence[str | None] | None = None,
        in_target: np.ndarray | None = None,
    ) -> int:
        """Write whole sequences in one transaction; returns the route rows written."""
        ...

    def finish_run(self, run_id: str) -> None:
        """Called once a job stops writing to the run (done, interrupted or failed): the store
        may reorganise the run's rows for reading (e.g. cluster routes by layer)."""
        ...

    def close(self) -> None: ...
