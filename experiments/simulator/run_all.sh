#!/usr/bin/env bash
# Regenerates every table and plot of experiments/simulator (a few minutes on 2 shared CPU cores).
# Full run directories (curves.csv, per-seed curves, Hydra config) go to $METIS_RUNS/simulator.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=experiments/simulator
RUNS=${METIS_RUNS:-runs}/simulator
keep() { mkdir -p "$OUT/$2"; cp "$RUNS/$1/summary.md" "$RUNS/$1/summary.csv" "$RUNS/$1/wall_time.txt" "$OUT/$2/"; }

# 1. timing: the 6 registered schemes x 5 seeds x 300 steps on the default scenario, one process
start=$(date +%s.%N)
$PY -m metis.simulate sim=flat_after_one schemes=all 'variants=[]' hydra.run.dir=$RUNS/registered_only
end=$(date +%s.%N)
echo "$(echo "$end - $start" | bc) s wall for the whole command (python start-up included)" >> "$RUNS/registered_only/wall_time.txt"
keep registered_only registered_only

# 2. every scenario: registered schemes + the variants of conf/simulate.yaml
for s in flat_after_one more_calls_help partial_help weak_model growing_skill item_pool; do
  $PY -m metis.simulate sim=$s schemes=all hydra.run.dir=$RUNS/$s report.per_seed_csv=false
  keep $s $s
done
cp $RUNS/flat_after_one/curves.png $OUT/flat_after_one/
cp $RUNS/growing_skill/curves.png $OUT/growing_skill/

# 3. ablations
$PY -m metis.simulate sim=partial_help report.per_seed_csv=false hydra.run.dir=$RUNS/partial_help_weights \
  'schemes=[{name:coupled,alpha:0.15},{name:coupled,alpha:1.0},{name:coupled,alpha:3.0},{name:coupled,alpha:10.0},{name:coupled,alpha:1.0,condition_tool_on_correct:false},{name:hdpo,w_tool:0.1},{name:hdpo,w_tool:0.15},{name:hdpo,w_tool:0.2},{name:hdpo,w_tool:0.3},{name:hdpo,w_tool:1.0}]'
keep partial_help_weights ablations/partial_help_weights
$PY -m metis.simulate sim=partial_help train.steps=1500 num_seeds=3 report.per_seed_csv=false \
  hydra.run.dir=$RUNS/partial_help_coupled_1500 'schemes=[{name:coupled,alpha:1.0},{name:coupled,alpha:3.0},{name:coupled,alpha:10.0}]'
keep partial_help_coupled_1500 ablations/partial_help_coupled_1500
for s in partial_help weak_model growing_skill flat_after_one; do   # HDPO tool term averaged over ALL rollouts
  $PY -m metis.simulate sim=$s train.nonzero_only=false report.per_seed_csv=false hydra.run.dir=$RUNS/dense_$s \
    'schemes=[{name:hdpo,w_tool:0.15},{name:hdpo,w_tool:0.3},{name:hdpo,w_tool:1.0}]'
  keep dense_$s ablations/dense_tool_term_$s
done
for nz in true false; do   # the rare late collapse of needed calls at large w_tool, with and without nonzero-only
  for s in flat_after_one growing_skill; do
    $PY -m metis.simulate sim=$s num_seeds=20 train.steps=600 train.nonzero_only=$nz report.per_seed_csv=false \
      hydra.run.dir=$RUNS/collapse_${s}_nonzero_$nz 'schemes=[{name:hdpo,w_tool:0.15},{name:hdpo,w_tool:0.3},{name:hdpo,w_tool:1.0}]'
    keep collapse_${s}_nonzero_$nz ablations/collapse_20seeds_${s}_nonzero_only_$nz
  done
done

# 4. the curriculum table (growing_skill): HDPO as published vs its tool term averaged over all rollouts
$PY - "$RUNS" "$OUT" <<'PYEOF'
import sys
import pandas as pd
from metis.sim.report import moving_average
runs, out = sys.argv[1], sys.argv[2]
steps = [0, 25, 50, 75, 100, 125, 150, 200, 250, 300]
lines = ["| run | metric | " + " | ".join(f"t={t}" for t in steps) + " |", "|" + "---|" * (len(steps) + 2)]
for name, path in [("hdpo (tool term over A_tool != 0)", f"{runs}/growing_skill/curves.csv"),
                   ("hdpo, tool term over all rollouts", f"{runs}/dense_growing_skill/curves.csv")]:
    d = pd.read_csv(path)
    d = d[d.scheme == "hdpo"].set_index("step")
    d["rho_Q (10-step avg)"] = moving_average(d[["rho_Q"]].to_numpy(), 10)[:, 0]
    for m in ["accuracy", "unnecessary_tool_rate", "necessary_tool_rate", "rho_Q (10-step avg)"]:
        vals = ["–" if pd.isna(d.loc[t, m]) else f"{d.loc[t, m]:.2f}" for t in steps]
        lines.append(f"| {name} | {m} | " + " | ".join(vals) + " |")
open(f"{out}/growing_skill/curriculum.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
