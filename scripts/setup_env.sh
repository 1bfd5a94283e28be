#!/usr/bin/env bash
# Create .venv (if missing) and install EIR with its test dependencies.
# torch is pinned to the CPU build first: an unpinned torch requirement would pull a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${EIR_TORCH_VERSION:-2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION}"
constraints=$(mktemp)
echo "torch==${TORCH_VERSION}" > "$constraints"
.venv/bin/python -m pip install --quiet -c "$constraints" -e ".[test]"
rm -f "$constraints"
.venv/bin/python -c "import torch, transformers, eir; print(f'EIR environment ready: torch {torch.__version__}, transformers {transformers.__version__}')"
