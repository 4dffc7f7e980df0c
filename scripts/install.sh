#!/usr/bin/env bash
# One-command install: PyTorch first (a CPU build where there is no GPU), then partdistill with its
# test extras, editable, into the active Python environment (activate a venv or conda env first).
#   bash scripts/install.sh            # TORCH_SPEC="torch==2.5.1" bash scripts/install.sh to choose
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec=$TORCH_SPEC
  elif command -v nvidia-smi >/dev/null 2>&1; then
    spec="torch>=2.4"            # the default CUDA build for this platform
  else
    spec="torch==2.13.0"         # no GPU: a build whose CPU path is all a laptop or CI needs
  fi
  echo "install.sh: installing $spec"
  "$PYTHON" -m pip install "$spec"
fi
"$PYTHON" -m pip install -e ".[dev]"
"$PYTHON" -c "import partdistill, torch, transformers, hydra, submitit; print('partdistill', partdistill.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
