#!/usr/bin/env bash
# Install routescope (editable) with the given extras, e.g. `bash scripts/install.sh dev`.
# torch is installed first only when missing: the CPU wheel (torch==2.13.0) where pip can find it,
# otherwise whatever torch pip resolves. An existing torch (CUDA or not) is kept: pyproject only
# asks for torch>=2.4, so users elsewhere are never pinned.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${1:-}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==${ROUTESCOPE_TORCH_VERSION:-2.13.0}" \
    || "$PY" -m pip install -q torch
fi
if [ -n "$extras" ]; then
  "$PY" -m pip install -q -e ".[$extras]"
else
  "$PY" -m pip install -q -e .
fi
