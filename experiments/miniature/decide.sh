#!/usr/bin/env bash
# The deciding miniature (experiments/miniature/DECISION_RULES.md), end to end on a CPU:
#   1. calibrate: SFT cold starts of several lengths, sampled on the val split, gated -> calibration.json
#      (stops here when none passes)
#   2. simulate_calibrated.py: the simulator's prediction for the chosen cold start, by the same rules
#   3. pre-flight: 3 RL steps of one arm, timed (sizes the sweep; printed)
#   4. the sweep: every line of experiments/sweeps/miniature_decide.txt from the chosen cold start,
#      $JOBS at a time; each final policy sampled (4 x 64 val prompts) and evaluated greedily
#   5. decide_report.py --collect: small per-run files into experiments/miniature/decide/, then the
#      verdicts (decide/verdicts.json) and the report (DECIDE.md)
#   (candidates the committed calibration.json shows failing are re-gated from their committed samples,
#   not retrained; CALIB_FRESH=1 retrains every candidate)
# Env: OUT (runs/miniature_decide), JOBS (2), SEEDS / ARMS (subsets), STEPS (override max_steps), CALIB_FRESH.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-runs/miniature_decide}
JOBS=${JOBS:-2}
SWEEP=experiments/sweeps/miniature_decide.txt
HERE=experiments/miniature
mkdir -p "$OUT/rl" "$OUT/logs"
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
T0=$(date +%s)
stamp() { echo "$1	$2	$(( $(date +%s) - $3 ))" >> "$OUT/times.tsv"; }

t=$(date +%s)
REUSE=--reuse-failed; [[ -n ${CALIB_FRESH:-} ]] && REUSE=
# shellcheck disable=SC2086
"$PY" "$HERE/calibrate.py" --out "$OUT" $REUSE | tee "$OUT/logs/calibrate.log"
stamp calibrate all "$t"
SFT=$("$PY" -c "import json,sys; d=json.load(open('$OUT/calibration.json')); print(next(c['hf'] for c in d['candidates'] if c['name']==d['chosen']))")

t=$(date +%s)
"$PY" "$HERE/simulate_calibrated.py" > "$OUT/logs/simulate.log" 2>&1 || echo "simulate_calibrated.py failed: $OUT/logs/simulate.log" >&2
stamp simulate calibrated "$t"

t=$(date +%s)
"$PY" -m metis.train experiment=miniature/hdpo_w0.15 model.init_from="$SFT" trainer.max_steps=3 \
    hydra.run.dir="$OUT/preflight" callbacks.progress.refresh_rate=0 > "$OUT/logs/preflight.log" 2>&1
stamp preflight hdpo_w0.15 "$t"
echo "pre-flight: 3 RL steps in $(( $(date +%s) - t )) s (the sweep runs 24 x 60 steps, $JOBS at a time)"

mapfile -t LINES < <(grep -v -E '^[[:space:]]*(#|$)' "$SWEEP")
run_one() {
    local i=$1 line=$2 seed arm t
    seed=$(sed -E 's/.*seed=([0-9]+).*/\1/' <<< "$line")
    arm=$(sed -E 's#.*experiment=miniature/([^ ]+).*#\1#' <<< "$line")
    if [[ -n ${SEEDS:-} && " $SEEDS " != *" $seed "* ]]; then return 0; fi
    if [[ -n ${ARMS:-} && " $ARMS " != *" $arm "* ]]; then return 0; fi
    [[ -f $OUT/rl/$i/final_sampled.json ]] && return 0   # finished earlier
    t=$(date +%s)
    # shellcheck disable=SC2086
    "$PY" -m metis.train $line model.init_from="$SFT" hydra.run.dir="$OUT/rl/$i" ${STEPS:+trainer.max_steps=$STEPS} \
        callbacks.progress.refresh_rate=0 > "$OUT/logs/rl_$i.log" 2>&1 || { echo "run $i failed: $OUT/logs/rl_$i.log" >&2; return 0; }
    "$PY" "$HERE/eval_policy.py" --init-from "$OUT/rl/$i/hf" --n 64 --samples 4 --out "$OUT/rl/$i/final_sampled.json" \
        > "$OUT/logs/rl_${i}_sampled.log" 2>&1 || true
    "$PY" "$HERE/eval_policy.py" --init-from "$OUT/rl/$i/hf" --n 64 --out "$OUT/rl/$i/final_greedy.json" \
        > "$OUT/logs/rl_${i}_greedy.log" 2>&1 || true
    stamp "rl_$i" "$line" "$t"
}
export -f run_one stamp
export OUT SFT PY SEEDS ARMS STEPS HERE
for i in "${!LINES[@]}"; do printf '%s\0%s\0' "$i" "${LINES[$i]}"; done | xargs -0 -n 2 -P "$JOBS" bash -c 'run_one "$1" "$2"' _
stamp total all "$T0"   # before the report, so that it reads the whole command's time
"$PY" "$HERE/decide_report.py" --collect "$OUT"
echo "done in $(( $(date +%s) - T0 )) s; report: $HERE/DECIDE.md (budget: 5400 s)"
