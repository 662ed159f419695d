#!/usr/bin/env bash
# Run the whole test suite (ruff, unit, integration, e2e) in a virtual environment of its own:
#   bash scripts/test.sh            on the locked versions (requirements/lock.txt), in .venvs/locked
#   bash scripts/test.sh --latest   on the newest versions pip resolves today, in .venvs/latest
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k cache`).
set -euo pipefail
cd "$(dirname "$0")/.."
deps=locked
if [ "${1:-}" = "--latest" ]; then deps=latest; shift; fi
venv=".venvs/$deps"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q -U pip
PYTHON="$venv/bin/python" ROUTESCOPE_DEPS=$deps bash scripts/install.sh dev
# the dashboard's browser test drives headless Chromium (Debian's package)
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq chromium; } \
    || echo "could not install chromium: the browser test will be skipped"
fi
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1
# two pytest workers on two cores: one torch thread each, or they fight over the cores
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PATH="$PWD/$venv/bin:$PATH"  # the `routescope` entry point of this environment
echo "== tests on the $deps versions ($("$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
  | grep -iE '^(torch|transformers|nnsight|duckdb|typer|streamlit|polars)==' | tr '\n' ' '))"
"$venv/bin/python" -m ruff check .
"$venv/bin/python" -m mypy routescope  # settings: [tool.mypy] in pyproject.toml
"$venv/bin/python" -m pytest -n 2 -q -p no:cacheprovider "$@" tests
