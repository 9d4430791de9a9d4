#!/usr/bin/env bash
# The whole curation pipeline on this machine: a planted raw set (240 SFT trajectories + 3 bad rows,
# 120 RL prompts), the tiny model's processor with the planted engine, the real sandbox, and the
# rule-based judge served over HTTP on 127.0.0.1. Copies the reports to experiments/curation/full_run/.
#   bash experiments/curation/run_full.sh            (about 3-4 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
WORK=${WORK:-runs/curation_demo}
PORT=${PORT:-8011}
rm -rf "$WORK"
$PY -m metis.curation.synthetic_raw "$WORK/raw" --n-sft 240 --n-rl 120 --seed 1

$PY -m metis.curation.fake_judge --port "$PORT" > "$WORK/fake_judge.log" 2>&1 &
JUDGE_PID=$!
trap 'kill $JUDGE_PID 2>/dev/null || true' EXIT
sleep 2

PLANTED=(rollout.engine._target_=metis.curation.synthetic_raw.PlantedEngine "+rollout.engine.plan=$WORK/raw/plan.json"
         rollout.loop.max_new_tokens=48 rollout.loop.max_response_tokens=160)
COMMON=(root="$WORK/run" logger.offline=true progress=false)
time $PY -m metis.curate stage=reexecute "${COMMON[@]}" raw_sft="$WORK/raw/sft_raw.jsonl"
time $PY -m metis.curate stage=no_tool_solvable "${COMMON[@]}" "${PLANTED[@]}"
time $PY -m metis.curate stage=judge "${COMMON[@]}" judge.base_url="http://127.0.0.1:$PORT/v1" judge.api_key_env=null \
  judge.trust_env=false
time $PY -m metis.curate stage=rl_pass_rate "${COMMON[@]}" "${PLANTED[@]}" raw_rl="$WORK/raw/rl_raw.parquet"

OUT=experiments/curation/full_run
rm -rf "$OUT" && mkdir -p "$OUT"
cp "$WORK/run/README.md" "$OUT/README.md"
for s in reexecute no_tool_solvable judge rl_pass_rate; do
  mkdir -p "$OUT/$s" && cp "$WORK/run/$s/report.md" "$WORK/run/$s/report.json" "$OUT/$s/"
done
$PY - "$WORK" <<'EOF'
import json, sys
from collections import Counter
work = sys.argv[1]
plan = json.load(open(f"{work}/raw/plan.json"))
print("planted SFT kinds:", dict(Counter(e["kind"] for e in plan["sft"].values())))
print("planted RL behaviours:", dict(Counter(e["behaviour"] for e in plan["rl"].values())))
print("bad rows:", plan["bad_rows"])
rows = {}
for stage in ("reexecute", "no_tool_solvable", "judge", "rl_pass_rate"):
    rows[stage] = {r["id"]: r for r in map(json.loads, open(f"{work}/run/{stage}/results.jsonl"))}
wrong = []
for rid, e in plan["sft"].items():
    got = next(((s, rows[s][rid]["reason"]) for s in ("reexecute", "no_tool_solvable", "judge")
                if rows[s].get(rid, {}).get("status") == "dropped"), None)
    want = (e["expected_stage"], e["expected_reason"]) if e["expected_stage"] else None
    wrong += [(rid, got, want)] if got != want else []
for rid, kind in plan["bad_rows"].items():
    wrong += [(rid, rows["reexecute"][rid]["reason"], kind)] if rows["reexecute"][rid]["reason"] != kind else []
for rid, e in plan["rl"].items():
    got = rows["rl_pass_rate"][rid]["reason"]
    wrong += [(rid, got, e["expected"])] if got != (e["expected"][1] if e["expected"] else None) else []
print(f"samples removed by another stage or reason than planted: {len(wrong)}", wrong[:5])
sys.exit(1 if wrong else 0)
EOF
