"""Formatting and option parsing the CLI commands share (numbers, JSON rows, integer lists)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from routescope.core.errors import InvalidParameterError


def parse_int_list(text: str, what: str) -> list[int]:
    """'1,2,4' or '1-64' or '1-8,16,32' -> sorted unique ints; one clear error line otherwise."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise InvalidParameterError(
                f"cannot read {what} {text!r}: use integers like 1,2,4 or a range like 1-64"
            ) from None
    if not out:
        raise InvalidParameterError(f"no {what} given; use integers like 1,2,4 or 1-64")
    return sorted(out)


def parse_names(text: str | None, what: str, example: str = "a,b") -> list[str] | None:
    """'a,b' -> ['a', 'b'] (None for no option); one clear error for an empty list."""
    if text is None:
        return None
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not names:
        raise InvalidParameterError(f"no {what} given; e.g. --{what} {example}")
    return names


def check_choice(value: str, allowed: Iterable[str], what: str) -> str:
    """`value` when it is one of `allowed`; else one clear error listing them."""
    choices = tuple(allowed)
    if value not in choices:
        raise InvalidParameterError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")
    return value


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, '–' for missing or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def signed(x: float | None, digits: int = 4) -> str:
    """A change for a table cell, with its sign ('–' for missing or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def json_rows(rows: Any) -> list[dict]:
    """Rows (a polars frame or a list of dicts) for JSON: non-finite floats become null."""
    if hasattr(rows, "to_dicts"):
        rows = rows.to_dicts()
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]
