#!/usr/bin/env bash
# Install routescope with its dev extras and run the whole test suite (unit, integration, e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
# the dashboard's browser test drives headless Chromium (Debian's package); skipped without it
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && apt-get install -y -qq chromium; } \
    || echo "could not install chromium: the browser test will be skipped"
fi
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1
# two pytest workers on two cores: one torch thread each, or they fight over the cores
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python3 -m ruff check .
python3 -m pytest -n 2 -q tests
