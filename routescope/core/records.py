"""What the collection engine hands to the store writer: one batch of sequences' routing.

The contract between `routescope.collect.engine` (model side) and `routescope.store` (DuckDB side).
Arrays are host numpy arrays, token rows grouped by sequence in position order, pads removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from routescope.core.errors import InvalidParameterError


@dataclass
class BatchRouting:
    """Routing of B sequences (N non-pad token rows in all) over the model's L MoE layers.

    seq_offsets: int64[B+1]      rows of sequence b are seq_offsets[b]:seq_offsets[b+1]
    token_ids:   int64[N]        the input token id of each row (prompt tokens, then generated ones)
    positions:   int32[N]        position within the sequence (0-based, pads not counted)
    phase:       uint8[N]        0 = prefill, 1 = decode (a generated token, routed when it was fed)
    experts:     int16[N, L, k]  routed expert ids in rank order (rank 0 = highest score)
    weights:     float32[N, L, k] gate weights as the model used them (None: an imported trace
                                  that records experts only)
    probs:       float32[N, L, E] full router distribution, or None when not asked for
    speculative: int16[N, L, D, m] for distance d = 1..D, layer l's router applied to the router
                                  input of layer l - d (the same token), its top-m experts in rank
                                  order; -1 where l - d does not exist. None when not recorded.
    """

    seq_offsets: np.ndarray
    token_ids: np.ndarray
    positions: np.ndarray
    phase: np.ndarray
    experts: np.ndarray
    weights: np.ndarray | None
    probs: np.ndarray | None = None
    speculative: np.ndarray | None = None

    @property
    def num_sequences(self) -> int:
        return len(self.seq_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.seq_offsets[-1])

    def require_weights(self, what: str) -> np.ndarray:
        """The gate weights, or one clear error naming what needs them."""
        if self.weights is None:
            raise InvalidParameterError(
                f"{what} needs gate weights, and this batch records experts only"
            )
        return self.weights

    def sequence(self, b: int) -> slice:
        return slice(int(self.seq_offsets[b]), int(self.seq_offsets[b + 1]))
