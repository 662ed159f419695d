"""routescope.core.registry: the named tables behind cache policies, predictors and importers."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from routescope.core import registry
from routescope.core.errors import InvalidParameterError
from routescope.core.registry import Named, Registry


@dataclass(frozen=True)
class Thing(Named):
    name: str
    param_min: int = 1
    example: int = 4


def table() -> Registry[Thing]:
    reg: Registry[Thing] = Registry("thing")
    for t in (Thing("plain"), Thing("top-<N>"), Thing("skip-<K>", param_min=2)):
        reg.register(t)
    return reg


def test_names_and_patterns():
    reg = table()
    assert list(reg) == ["plain", "top-<N>", "skip-<K>"] and len(reg) == 3
    assert reg.lookup("plain") == (reg["plain"], 0)
    assert reg.lookup(" TOP-12 ") == (reg["top-<N>"], 12)
    assert reg.get_entry("skip-2") is reg["skip-<K>"]
    assert [t.default_name for t in reg.entries()] == ["plain", "top-4", "skip-4"]
    assert reg.valid_names() == "plain, top-<N> (N >= 1), skip-<K> (K >= 2)"


@pytest.mark.parametrize("name", ["other", "top-", "top-0", "top-x", "skip-1", "plainer"])
def test_unknown_names_are_one_line_listing_the_valid_ones(name):
    with pytest.raises(InvalidParameterError) as err:
        table().lookup(name)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"unknown thing {name!r}; use one of plain, top-<N>")


def test_duplicates_clashes_and_bad_patterns_are_refused():
    reg = table()
    with pytest.raises(ValueError, match="thing 'plain' is already registered"):
        reg.register(Thing("plain"))
    with pytest.raises(ValueError, match="thing 'top-4' clashes with 'top-<N>'"):
        reg.register(Thing("top-4"))
    with pytest.raises(ValueError, match="must look like 'prefix-<N>'"):
        Thing("Bad-<1>").check_name("thing")


def test_copy_is_independent_and_listing_is_configurable():
    reg = table()
    scratch = reg.copy()
    scratch.register(Thing("new"))
    assert "new" in scratch and "new" not in reg
    listed: Registry[Thing] = Registry("thing", listing=lambda t: t.name.upper(), sep="; ")
    listed.register(Thing("a"))
    listed.register(Thing("b"))
    with pytest.raises(InvalidParameterError, match="use one of A; B$"):
        listed.lookup("c")


def test_the_docstring_example_runs():
    doc = registry.__doc__ or ""
    block = doc.split("::\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    scope: dict = {}
    exec(compile(textwrap.dedent("\n".join(lines)), "registry-example", "exec"), scope)
    scorer, n = scope["scorer"], scope["n"]
    assert (scorer.name, n, scorer.score(n)) == ("top-<N>", 3, pytest.approx(1 / 3))
    assert scope["SCORERS"].valid_names() == "top-<N> (N >= 1), best"
