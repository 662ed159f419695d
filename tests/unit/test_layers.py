"""routescope's packages import one way (DESIGN §1): every import in routescope/, at module level
or inside a function, absolute or relative, is read from the source and checked against the
rules below. A new package needs a row here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "routescope"

#: package → the routescope packages it must never import.
FORBIDDEN: dict[str, set[str]] = {
    "core": {"store", "models", "collect", "importers", "analysis", "steering", "cli"},
    "store": {"models", "collect", "importers", "analysis", "steering", "cli"},
    "models": {"store", "collect", "importers", "analysis", "steering", "cli"},
    "collect": {"importers", "analysis", "steering", "cli"},
    "importers": {"collect", "analysis", "steering", "cli"},
    "analysis": {"models", "collect", "importers", "steering", "cli"},
    "steering": {"importers", "cli"},
    "cli": set(),
}

#: third-party modules only the shells may import.
SHELL_ONLY = {"streamlit"}


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, relative imports resolved."""
    rel = path.relative_to(root.parent)
    here = list(rel.parent.parts)  # e.g. ["routescope", "store"]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = [node.module or ""]
            else:
                base = here[: len(here) - node.level + 1] + ([node.module] if node.module else [])
            module = ".".join(base)
            out.append((node.lineno, module))
            # `from routescope import analysis` imports the package named by the alias
            if module == "routescope":
                out += [(node.lineno, f"routescope.{a.name}") for a in node.names]
    return out


def violations(root: Path = PACKAGE) -> list[str]:
    """Every import that breaks a rule, as 'file:line: what'."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        pkg = parts[0] if len(parts) > 1 else None
        for line, module in imported_modules(path, root):
            segs = module.split(".")
            where = f"{path.relative_to(root.parent)}:{line}"
            if segs[0] in SHELL_ONLY and pkg != "cli":
                bad.append(f"{where}: imports {segs[0]} (only the CLI and app may)")
            if segs[0] != root.name or len(segs) < 2:
                continue
            if pkg is None:
                continue  # routescope/__init__.py, queries.py: the package's front door
            if pkg not in FORBIDDEN:
                bad.append(f"{where}: package {pkg} has no row in FORBIDDEN")
            elif segs[1] in FORBIDDEN[pkg]:
                bad.append(f"{where}: {pkg} imports {module}")
            if segs[1] == "app":
                bad.append(f"{where}: imports the app")
    return bad


def test_routescope_imports_one_way():
    assert violations() == []


def test_every_package_has_a_rule():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(FORBIDDEN)


@pytest.mark.parametrize(
    ("file", "text", "found"),
    [
        ("store/x.py", "from routescope.analysis import cache\n", "store imports"),
        ("store/x.py", "def f():\n    import routescope.collect.runner\n", "store imports"),
        ("store/x.py", "from ..steering import spec\n", "store imports routescope.steering"),
        ("core/x.py", "from routescope import store\n", "core imports routescope.store"),
        ("collect/x.py", "from routescope.steering.presets import job_steering\n", "collect"),
        ("analysis/x.py", "import streamlit as st\n", "imports streamlit"),
    ],
)
def test_the_checker_finds_a_planted_violation(tmp_path, file, text, found):
    root = tmp_path / "routescope"
    for pkg in FORBIDDEN:
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / file).write_text(text)
    bad = violations(root)
    assert len(bad) == 1 and found in bad[0], bad
