#!/usr/bin/env bash
# Submit a sweep file as one SLURM array job, one array index per run (slurm/sweep_array.sbatch).
#
#   slurm/submit_sweep.sh SWEEP_FILE [sbatch args ...] [-- override ...]
#
#   slurm/submit_sweep.sh experiments/sweeps/reward_schemes_tiny.txt
#   MAX_PARALLEL=4 slurm/submit_sweep.sh experiments/sweeps/reward_schemes_tiny.txt -p cpu
#   slurm/submit_sweep.sh experiments/sweeps/smoke.txt --wait -- trainer.max_steps=1
#
# Counts the runs in SWEEP_FILE (non-blank lines not starting with #), then calls
#   sbatch --array=0-<N-1>[%$MAX_PARALLEL] --chdir=<repo> [sbatch args] slurm/sweep_array.sbatch SWEEP_FILE [overrides]
# Logs: <runs>/sweeps/<sweep>/slurm-<array job>_<index>.out (pass --output=... to change).
# sbatch args go before the script (e.g. -p gpu --gpus-per-node=8 --ntasks-per-node=8, --wait,
# --dependency=...); an --array given there replaces the computed one (e.g. to rerun 3,5).
# Environment: MAX_PARALLEL (at most that many runs at once), SWEEP_NAME, EXPERIMENT, METIS_RUNS,
# PYTHON, WANDB_* are exported to the jobs. Prints sbatch's output ("Submitted batch job <id>");
# with --wait, exits with the array's exit code (non-zero if any run failed).
set -euo pipefail

usage() { echo "usage: $0 SWEEP_FILE [sbatch args ...] [-- override ...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
SWEEP_FILE=$1
shift
[[ -f $SWEEP_FILE ]] || { echo "no such sweep file: $SWEEP_FILE" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SWEEP_FILE=$(cd "$(dirname "$SWEEP_FILE")" && pwd)/$(basename "$SWEEP_FILE")

SBATCH_ARGS=()
OVERRIDES=()
while [[ $# -gt 0 ]]; do
    if [[ $1 == -- ]]; then shift; OVERRIDES=("$@"); break; fi
    SBATCH_ARGS+=("$1")
    shift
done

N=$(grep -c -v -E '^[[:space:]]*(#|$)' "$SWEEP_FILE" || true)
(( N > 0 )) || { echo "$SWEEP_FILE holds no runs" >&2; exit 2; }

ARRAY="0-$((N - 1))${MAX_PARALLEL:+%$MAX_PARALLEL}"
for a in "${SBATCH_ARGS[@]}"; do
    case $a in --array=*|-a) ARRAY="" ;; esac
done

SWEEP=${SWEEP_NAME:-$(basename "${SWEEP_FILE%.*}")}
SWEEP=${SWEEP//[^A-Za-z0-9_.-]/_}
RUNS=${METIS_RUNS:-runs}
[[ $RUNS == /* ]] || RUNS=$ROOT/$RUNS
mkdir -p "$RUNS/sweeps/$SWEEP"
echo "sweep $SWEEP: $N run(s) from $SWEEP_FILE${ARRAY:+ -> --array=$ARRAY}" >&2
export METIS_ROOT=$ROOT
exec sbatch ${ARRAY:+"--array=$ARRAY"} --chdir="$ROOT" --job-name="sweep-$SWEEP" \
    --output="$RUNS/sweeps/$SWEEP/slurm-%A_%a.out" "${SBATCH_ARGS[@]}" \
    "$ROOT/slurm/sweep_array.sbatch" "$SWEEP_FILE" "${OVERRIDES[@]}"
