#!/usr/bin/env bash
# The miniature reproduction, end to end, on a CPU:
#   1. SFT cold start: experiment=miniature_sft -> $OUT/sft/hf, and the no-tool control
#      experiment=miniature_sft_notool (same samples, direct answers) -> $OUT/sft_notool/hf
#   2. held-out greedy eval of both (64 val prompts)
#   3. every line of experiments/sweeps/miniature.txt (9 arms x 3 seeds) from $OUT/sft/hf,
#      $JOBS at a time, one thread each
#      (+ a greedy eval of each final policy on the 64 val prompts: $OUT/rl/<i>/final_eval.json)
#   4. python -m metis.dashboard $OUT/rl -> experiments/miniature/dashboard/ (curves per arm, seed
#      means with 95% bands: <section>.png, index.html, summary.csv of the last validation)
#
#   bash experiments/miniature/run.sh
#   SEEDS=0 ARMS="grpo hdpo_w0.15" SKIP_SFT=1 bash experiments/miniature/run.sh   # a part of it
# Env: OUT (runs/miniature), JOBS (2), SEEDS (all in the sweep file), ARMS (all; e.g. "grpo hdpo_w0.15"),
# STEPS (trainer.max_steps of each arm; default from conf/experiment/miniature_rl.yaml), EXTRA (more
# overrides for every arm), SKIP_SFT=1 (reuse $OUT/sft/hf).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$ROOT/.venv/bin/python}
OUT=${OUT:-runs/miniature}
JOBS=${JOBS:-2}
SWEEP=experiments/sweeps/miniature.txt
mkdir -p "$OUT/rl" "$OUT/logs"
export WANDB_MODE=offline WANDB_SILENT=true TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
T0=$(date +%s)
stamp() { echo "$1	$2	$(( $(date +%s) - $3 ))" >> "$OUT/times.tsv"; }

ABS_OUT=$OUT; [[ $OUT == /* ]] || ABS_OUT=$ROOT/$OUT
if [[ ${SKIP_SFT:-0} != 1 || ! -d $OUT/sft/hf ]]; then
    t=$(date +%s)   # the trigger-happy cold start and, beside it, the no-tool control (same data, direct answers)
    OMP_NUM_THREADS=1 "$PY" -m metis.train experiment=miniature_sft hydra.run.dir="$OUT/sft" \
        callbacks.progress.refresh_rate=0 > "$OUT/logs/sft.log" 2>&1 &
    OMP_NUM_THREADS=1 "$PY" -m metis.train experiment=miniature_sft_notool hydra.run.dir="$OUT/sft_notool" \
        callbacks.progress.refresh_rate=0 > "$OUT/logs/sft_notool.log" 2>&1 &
    wait
    stamp sft sft "$t"
fi
SFT=$ABS_OUT/sft/hf
t=$(date +%s)
"$PY" experiments/miniature/eval_policy.py --init-from "$SFT" --n 64 --out "$OUT/sft_eval.json" > "$OUT/logs/sft_eval.log" 2>&1 &
"$PY" experiments/miniature/eval_policy.py --init-from "$ABS_OUT/sft_notool/hf" --n 64 --out "$OUT/sft_eval_notools.json" > "$OUT/logs/sft_eval_notools.log" 2>&1 &
wait
stamp eval sft_eval "$t"

# The sweep: line i of the sweep file -> $OUT/rl/<i>.
mapfile -t LINES < <(grep -v -E '^[[:space:]]*(#|$)' "$SWEEP")
run_one() {
    local i=$1 line=$2
    local seed
    seed=$(sed -E 's/.*seed=([0-9]+).*/\1/' <<< "$line")
    if [[ -n ${SEEDS:-} && " $SEEDS " != *" $seed "* ]]; then return 0; fi
    local arm
    arm=$(sed -E 's#.*experiment=miniature/([^ ]+).*#\1#' <<< "$line")
    if [[ -n ${ARMS:-} && " $ARMS " != *" $arm "* ]]; then return 0; fi
    [[ -f $OUT/rl/$i/hf/config.json ]] && return 0   # finished earlier
    local t
    t=$(date +%s)
    # shellcheck disable=SC2086
    "$PY" -m metis.train $line model.init_from="$SFT" hydra.run.dir="$OUT/rl/$i" \
        ${STEPS:+trainer.max_steps=$STEPS} callbacks.progress.refresh_rate=0 ${EXTRA:-} > "$OUT/logs/rl_$i.log" 2>&1 \
        || echo "run $i failed: see $OUT/logs/rl_$i.log" >&2
    stamp "rl_$i" "$line" "$t"
    # final held-out numbers: greedy on the whole val split (32 prompts) with the trained policy
    [[ -f $OUT/rl/$i/hf/config.json ]] && "$PY" experiments/miniature/eval_policy.py --init-from "$OUT/rl/$i/hf" \
        --n 64 --out "$OUT/rl/$i/final_eval.json" > "$OUT/logs/rl_${i}_eval.log" 2>&1 || true
}
export -f run_one stamp
export OUT SFT PY SEEDS ARMS STEPS EXTRA
for i in "${!LINES[@]}"; do printf '%s\0%s\0' "$i" "${LINES[$i]}"; done \
    | xargs -0 -n 2 -P "$JOBS" bash -c 'run_one "$1" "$2"' _
stamp total all "$T0"
"$PY" -m metis.dashboard "$OUT/rl" --out experiments/miniature/dashboard --title "Miniature sweep"
echo "done in $(( $(date +%s) - T0 )) s; curves: experiments/miniature/dashboard/index.html"
