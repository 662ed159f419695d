"""Named tables at routescope's extension points: cache policies, prefetch predictors, importers.

A `Registry` maps names to entries, in registration order. An entry's name is plain (``lru``) or a
pattern with one integer parameter (``lookahead-<L>``: ``lookahead-16`` names it with L = 16); the
entry says which names are its own (`Named.match`). Lookups of unknown names fail with one line
(`InvalidParameterError`) that lists every valid name; registering a name twice, or a name that an
entry already answers to, is a `ValueError` at import time.

A table of your own (an entry is any class with `Named`'s members; a frozen dataclass that mixes
`Named` in needs only a ``name`` field)::

    from collections.abc import Callable
    from dataclasses import dataclass, field

    from routescope.core.registry import Named, Registry

    ScoreFn = Callable[[int], float]


    @dataclass(frozen=True)
    class Scorer(Named):
        name: str  # 'best' or a pattern such as 'top-<N>' (N an integer >= param_min)
        description: str
        score: ScoreFn = field(repr=False)


    SCORERS: Registry[Scorer] = Registry("scorer")


    def register_scorer(name: str, description: str) -> Callable[[ScoreFn], ScoreFn]:
        '''Decorator: the decorated function is scorer `name`.'''
        return SCORERS.decorator(lambda fn: Scorer(name, description, fn))


    @register_scorer("top-<N>", "the best N")
    def top_n(n: int) -> float:
        return 1.0 / n


    SCORERS.register(Scorer("best", "the best one", lambda n: 1.0))
    scorer, n = SCORERS.lookup("top-3")  # (the 'top-<N>' entry, 3)

The tables that use it: `routescope.analysis.policies` (cache policies),
`routescope.analysis.prefetch` (predictors), `routescope.importers.registry` (trace formats).
Model-family adapters keep their own table (`routescope.models.adapters.registry`): it is keyed
by config ``model_type`` aliases, holds classes, and is filled by scanning a package.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, TypeVar

from routescope.core.errors import InvalidParameterError

#: A name pattern: a lower-case prefix, then one parameter name in angle brackets ('lookahead-<L>').
PATTERN = re.compile(r"^(?P<prefix>[a-z0-9][a-z0-9_-]*?)<(?P<param>[A-Za-z]+)>$")


class Named:
    """What a registry entry answers to: `name`, plain or a pattern ``prefix<P>`` whose parameter
    is an integer >= `param_min`; `example` is the parameter of the default name.

    A mixin for (frozen) dataclasses: the subclass declares ``name`` (and may declare
    ``param_min``, ``example`` as fields); it may override `default_name` and `match`.
    """

    name: str
    param_min: int = 1
    example: int = 1

    @property
    def is_pattern(self) -> bool:
        return "<" in self.name

    @property
    def prefix(self) -> str:
        """The name before the parameter ('lookahead-' of 'lookahead-<L>'); the name otherwise."""
        m = PATTERN.match(self.name)
        return m.group("prefix") if m else self.name

    @property
    def param_name(self) -> str | None:
        m = PATTERN.match(self.name)
        return m.group("param") if m else None

    @property
    def default_name(self) -> str:
        """The concrete name used in default sets and examples ('lookahead-16')."""
        return f"{self.prefix}{self.example}" if self.is_pattern else self.name

    def match(self, name: str) -> int | None:
        """The parameter if `name` is this entry's (0 for a plain name), else None."""
        if not self.is_pattern:
            return 0 if name == self.name else None
        rest = name[len(self.prefix) :] if name.startswith(self.prefix) else ""
        if rest.isdigit() and int(rest) >= self.param_min:
            return int(rest)
        return None

    def label(self) -> str:
        """'lookahead-<L> (L >= 1)' or the plain name: how lists of valid names spell it."""
        if self.is_pattern:
            return f"{self.name} ({self.param_name} >= {self.param_min})"
        return self.name

    def check_name(self, what: str) -> None:
        """A ValueError when a pattern is malformed (at registration, so at import time)."""
        if self.is_pattern and not PATTERN.match(self.name):
            raise ValueError(f"{what} pattern {self.name!r} must look like 'prefix-<N>'")


class Entry(Protocol):
    """What a registry holds (`Named` provides it)."""

    @property
    def name(self) -> str: ...

    @property
    def default_name(self) -> str: ...

    def match(self, name: str) -> int | None: ...

    def label(self) -> str: ...


E = TypeVar("E", bound=Entry)
F = TypeVar("F")


class Registry(Mapping[str, E]):
    """Entries by name, in registration order. As a mapping: registered name → entry.

    what: the kind of entry, as errors say it ('cache policy'); listing: how one entry appears in
    the list of valid names (default: its label); sep: between listed entries.
    """

    def __init__(
        self, what: str, *, listing: Callable[[E], str] | None = None, sep: str = ", "
    ) -> None:
        self.what = what
        self._listing = listing
        self._sep = sep
        self._entries: dict[str, E] = {}

    # ---- the mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"

    def copy(self) -> Registry[E]:
        """A registry with the same entries (tests register into a copy)."""
        out: Registry[E] = Registry(self.what, listing=self._listing, sep=self._sep)
        out._entries = dict(self._entries)
        return out

    # ---- registering -------------------------------------------------------------------------------
    def register(self, entry: E) -> E:
        """Add `entry` (a name may be registered once, and may not be one an entry answers to)."""
        if entry.name in self._entries:
            raise ValueError(f"{self.what} {entry.name!r} is already registered")
        clash = [e.name for e in self._entries.values() if e.match(entry.default_name) is not None]
        if clash:
            raise ValueError(f"{self.what} {entry.name!r} clashes with {clash[0]!r}")
        self._entries[entry.name] = entry
        return entry

    def decorator(self, make: Callable[[F], E]) -> Callable[[F], F]:
        """Decorator from an entry factory: ``make(fn)`` is registered, `fn` returned unchanged.
        A module's ``register_x(name, **fields)`` decorator is
        ``return TABLE.decorator(lambda fn: X(name, fn=fn, **fields))``."""

        def deco(fn: F) -> F:
            self.register(make(fn))
            return fn

        return deco

    # ---- looking up --------------------------------------------------------------------------------
    def entries(self) -> list[E]:
        """Every entry, in registration order."""
        return list(self._entries.values())

    def valid_names(self) -> str:
        """'lru, lfu, …, lookahead-<L> (L >= 1)': the names, as errors and help list them."""
        show = self._listing or (lambda e: e.label())
        return self._sep.join(show(e) for e in self._entries.values())

    def unknown(self, name: str) -> InvalidParameterError:
        """The one-line error for a name no entry answers to."""
        return InvalidParameterError(
            f"unknown {self.what} {name!r}; use one of {self.valid_names()}"
        )

    def lookup(self, name: str) -> tuple[E, int]:
        """(entry, parameter) for a name such as 'lru' or 'lookahead-16' (case and surrounding
        space ignored); one clear error listing the valid names otherwise."""
        key = name.strip().lower()
        for entry in self._entries.values():
            param = entry.match(key)
            if param is not None:
                return entry, param
        raise self.unknown(name)

    def get_entry(self, name: str) -> E:
        """The entry `name` names (its parameter dropped); one clear error otherwise."""
        return self.lookup(name)[0]
