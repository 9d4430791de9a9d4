#!/usr/bin/env bash
# The RL benchmark in one command: builds bench/.venv (CPU torch 2.13 + TRL + Metis, separate from
# .venv) on first use, then runs bench/rl_bench.py. Extra arguments go to rl_bench.py, e.g.
#   bash bench/run.sh --quick
#   bash bench/run.sh --sections rollout,step
# Results: bench/results/rl_bench.md (+ .json and one CSV per table).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${METIS_BENCH_VENV:-bench/.venv}"
bash bench/setup_trl.sh "$VENV"
exec "$VENV/bin/python" bench/rl_bench.py "$@"
