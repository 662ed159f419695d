"""Canonical JSON: equal values give equal text (keys of stored results, run configs)."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal dicts give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
