#!/usr/bin/env bash
# Refresh requirements/lock.txt: install the newest versions into a fresh environment, run the
# whole suite there, and only if it passes write that environment's exact versions as the lock
# (torch and its CUDA companions excluded: scripts/install.sh handles torch on its own).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venvs/lock
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q -U pip
PYTHON="$venv/bin/python" ROUTESCOPE_DEPS=latest bash scripts/install.sh dev
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PATH="$PWD/$venv/bin:$PATH"
"$venv/bin/python" -m ruff check .
"$venv/bin/python" -m mypy routescope
"$venv/bin/python" -m pytest -n 2 -q -p no:cacheprovider tests
tmp=$(mktemp)
{
  echo "# The exact versions the test suite passed with; made by scripts/lock.sh on $(date -u +%F)."
  echo "# A pip constraints file: scripts/install.sh uses it unless ROUTESCOPE_DEPS=latest."
  echo "# platform: $("$venv/bin/python" -c 'import platform, sys; print(f"Python {sys.version.split()[0]}, {platform.system()} {platform.machine()}")')"
  "$venv/bin/python" -m pip list --format=freeze --exclude-editable \
    | grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|routescope|pip|setuptools|wheel)==' | sort -f
} > "$tmp"
mv "$tmp" requirements/lock.txt
echo "wrote requirements/lock.txt ($(grep -vc '^#' requirements/lock.txt) packages)"
