#!/usr/bin/env bash
# Install routescope (editable) into the current Python with the given extras, e.g.
# `bash scripts/install.sh app`. Versions come from the lock (requirements/lock.txt, the exact set
# the test suite last passed with) unless ROUTESCOPE_DEPS=latest, which takes the newest versions
# pip resolves today (what `pip install -e '.[app]'` would give).
#
# torch is handled first and is never part of the lock: an existing torch (CUDA or not) is kept;
# when none is present the CPU wheel torch==2.13.0 is tried (it lies on these machines' disks), then
# whatever torch pip resolves. pyproject only asks for torch>=2.4, so users elsewhere are not pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:-}
deps=${ROUTESCOPE_DEPS:-locked}
lock=requirements/lock.txt
target="."
[ -n "$extras" ] && target=".[$extras]"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==${ROUTESCOPE_TORCH_VERSION:-2.13.0}" \
    || "$PY" -m pip install -q torch
fi
# keep the torch that is there: a newer release would replace a CPU build with a multi-GB CUDA one
keep_torch=$(mktemp)
trap 'rm -f "$keep_torch"' EXIT
"$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$keep_torch"

case "$deps" in
  locked)
    if [ ! -f "$lock" ]; then
      echo "no $lock: run scripts/lock.sh, or install unlocked with ROUTESCOPE_DEPS=latest" >&2
      exit 2
    fi
    "$PY" -m pip install -q -c "$lock" -c "$keep_torch" -e "$target" \
      || { echo "the locked set ($lock, made on $(sed -n 's/^# platform: //p' "$lock")) did not" \
                "install here; install unlocked with ROUTESCOPE_DEPS=latest bash scripts/install.sh $extras" >&2
           exit 2; }
    ;;
  latest)
    "$PY" -m pip install -q -U --upgrade-strategy eager -c "$keep_torch" -e "$target"
    ;;
  *)
    echo "ROUTESCOPE_DEPS must be 'locked' or 'latest', not '$deps'" >&2
    exit 2
    ;;
esac
