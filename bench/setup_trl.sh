#!/usr/bin/env bash
# A separate venv for the TRL peer baseline (never a Metis dependency; never touches .venv).
# torch is named in the same pip command so the CPU build is kept.
#   bash bench/setup_trl.sh [VENV_DIR]        (default: bench/.venv, ignored by git)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${METIS_BENCH_VENV:-bench/.venv}}"  # not under /tmp: the Python tool's sandbox hides /tmp
TRL_VERSION="${TRL_VERSION:-1.16.0}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import trl, metis" 2>/dev/null; then
  echo "$VENV already has trl $("$VENV/bin/python" -c 'import trl; print(trl.__version__)')"; exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q ${METIS_TORCH_INDEX:+--extra-index-url "$METIS_TORCH_INDEX"} \
  "torch==2.13.0" "trl==$TRL_VERSION" psutil -e .
"$VENV/bin/python" -c "import torch, trl, transformers; print('torch', torch.__version__, 'trl', trl.__version__, 'transformers', transformers.__version__)"
