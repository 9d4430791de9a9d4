#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with Metis and its test tools.
#   CPU machine : installs the CPU torch (torch==2.13.0; set METIS_TORCH_INDEX to a CPU wheel index,
#                 e.g. https://download.pytorch.org/whl/cpu, where PyPI would hand out a CUDA build).
#   GPU machine : keeps the CUDA torch already in the environment (METIS_VENV_SYSTEM=1 builds the venv
#                 with --system-site-packages to reuse it), installs one if there is none.
#   Extras      : METIS_EXTRAS="dev,quant" (default "dev"); "gpu" adds flash-attn and vLLM.
#   Sandbox     : installs Debian's bubblewrap when run as root with apt-get; otherwise warns.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${METIS_VENV:-.venv}
EXTRAS=${METIS_EXTRAS:-dev}
TORCH_CPU=${METIS_TORCH_CPU:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  if [ "${METIS_VENV_SYSTEM:-0}" = 1 ]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip setuptools wheel

index_args=()
[ -n "${METIS_TORCH_INDEX:-}" ] && index_args=(--extra-index-url "$METIS_TORCH_INDEX")
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[metis] GPU found: keeping the installed CUDA torch"
  "$VENV/bin/python" -c "import torch" 2>/dev/null || $PIP install -q torch
  $PIP install -q -e ".[${EXTRAS}]"
else
  echo "[metis] no GPU: installing the CPU torch ($TORCH_CPU)"
  # torch is named in the same command so that no dependency can pull a CUDA build instead
  $PIP install -q "${index_args[@]}" "$TORCH_CPU" -e ".[${EXTRAS}]"
fi

if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[metis] installing bubblewrap (the Python tool's sandbox)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
      || echo "[metis] WARNING: could not install bubblewrap; the Python tool falls back to a plain subprocess"
  else
    echo "[metis] WARNING: bubblewrap (bwrap) not found; install it (apt-get install bubblewrap) for the sandbox"
  fi
fi
"$VENV/bin/python" -c "import torch, transformers, lightning, metis; print(f'[metis] ready: torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}, cuda={torch.cuda.is_available()}')"
