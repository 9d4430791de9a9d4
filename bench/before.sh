#!/usr/bin/env bash
# Measure Metis as it was at an older commit: check the commit out in a temporary git worktree and
# run THAT commit's own bench/rl_bench.py there (its code, its benchmark), with the same bench venv
# as the current run. Results go to bench/results/before-<short sha>/ of this checkout.
#   bash bench/before.sh <commit> [rl_bench.py arguments, e.g. --sections rollout,step --quick]
# Compare with bench/results/rl_bench.md of the current code, measured on the same machine and load.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bash bench/before.sh <commit> [rl_bench.py arguments]" >&2; exit 2; }
COMMIT="$(git rev-parse --verify "$1^{commit}")"; shift
SHORT="$(git rev-parse --short "$COMMIT")"
HERE="$(pwd)"
VENV="${METIS_BENCH_VENV:-bench/.venv}"
bash bench/setup_trl.sh "$VENV"
PY="$(cd "$(dirname "$VENV/bin/python")" && pwd)/python"
# not under /tmp: the Python tool's sandbox hides /tmp
TREE="$HERE/bench/.before/metis-$SHORT"
mkdir -p "$(dirname "$TREE")"
git worktree add --detach "$TREE" "$COMMIT" >/dev/null
trap 'git -C "$HERE" worktree remove --force "$TREE"' EXIT
# PYTHONPATH puts the old commit's metis (and bench) ahead of the venv's editable install of this one
(cd "$TREE" && PYTHONPATH="$TREE" "$PY" bench/rl_bench.py "$@")
OUT="bench/results/before-$SHORT"
mkdir -p "$OUT"
cp -r "$TREE"/bench/results/. "$OUT"/
echo "Metis at $SHORT: results in $OUT (this checkout's own: bench/results/rl_bench.md)"
