"""The deciding sweep's report, from small per-run files committed beside it.

    python experiments/miniature/decide_report.py --collect runs/miniature_decide   # runs -> decide/*.json
    python experiments/miniature/decide_report.py                                    # decide/*.json -> report

`--collect` reads each finished run under `<runs>/rl/<i>/` (its `config.yaml`, offline W&B history,
`rollouts/train.jsonl`, `final_sampled.json(l)` and `final_greedy.json`) and writes one small JSON per
run into `experiments/miniature/decide/` (per-step curves, per-prompt sampled outcomes, final
metrics, the shadow rho_Q). Without `--collect` it reads only those files and writes
`decide/verdicts.json` and `DECIDE.md`: every number in the report comes from them, by the rules of
`DECISION_RULES.md` (`metis.analysis.claims`).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from metis.analysis.claims import Run, shadow_rho_q, verdicts  # noqa: E402
from metis.analysis.stats import cluster_bootstrap, fisher_exact, t_interval  # noqa: E402

ARMS = ["grpo", "hdpo_w0.15", "hdpo_w0.15_allavg", "coupled_a0.05", "coupled_a3", "penalty_l0.3"]
CURVE_KEYS = ["accuracy", "unnecessary_tool_rate", "necessary_tool_rate", "rho_Q", "tool_call_rate"]
FINAL_KEYS = ["accuracy", "accuracy_tool_needed", "accuracy_tool_unneeded", "unnecessary_tool_rate",
              "necessary_tool_rate", "mean_tool_calls"]


def collect(runs: Path, out: Path) -> int:
    import yaml

    from metis.utils.wandb_offline import read_history

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for run in sorted(p for p in (runs / "rl").iterdir() if (p / "final_sampled.json").exists()):
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        arm = [t for t in cfg.get("tags", []) if t != "miniature_decide"][-1]
        hist = read_history(sorted(glob.glob(str(run / "wandb" / "offline-run-*")))[-1])
        curves: dict[str, list[float]] = defaultdict(list)
        for row in hist:
            if "train/rl_step" in row and "train/accuracy" in row:
                curves["step"].append(float(row["train/rl_step"]))
                for k in CURVE_KEYS:
                    curves[k].append(float(row.get(f"train/{k}", float("nan"))))
        records = [json.loads(x) for x in (run / "rollouts" / "train.jsonl").read_text().splitlines() if x.strip()]
        shadow = shadow_rho_q(records)
        curves["shadow_rho_Q"] = [shadow.get(int(s), float("nan")) for s in curves["step"]]
        per_prompt: dict[str, dict[str, list[int]]] = {"correct": defaultdict(list), "called": defaultdict(list)}
        for line in (run / "final_sampled.jsonl").read_text().splitlines():
            r = json.loads(line)
            for k in per_prompt:
                per_prompt[k][r["prompt_id"]].append(int(r[k]))
        doc = {"arm": arm, "seed": int(cfg["seed"]), "steps": int(cfg["trainer"]["max_steps"]),
               "final_sampled": json.loads((run / "final_sampled.json").read_text()),
               "final_greedy": json.loads((run / "final_greedy.json").read_text())
               if (run / "final_greedy.json").exists() else None,
               "needs_tool": {json.loads(x)["prompt_id"]: json.loads(x)["needs_tool"]
                              for x in (run / "final_sampled.jsonl").read_text().splitlines()},
               "per_prompt": per_prompt, "curves": curves}
        (out / f"{arm}_s{doc['seed']}.json").write_text(json.dumps(doc) + "\n")
        n += 1
    return n


def load(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*_s*.json"))]


def report(docs: list[dict], out_md: Path, out_json: Path) -> dict:
    runs = [Run(d["arm"], d["seed"], {k: d["final_sampled"][k] for k in FINAL_KEYS if k in d["final_sampled"]},
                {k: d["curves"][k] for k in ("step", "accuracy", "unnecessary_tool_rate", "rho_Q")})
            for d in docs]
    v = verdicts(runs, "hdpo_w0.15", "coupled_a3", "coupled_a0.05")
    arms = [a for a in ARMS if any(d["arm"] == a for d in docs)]
    table = {}
    for arm in arms:
        mine = [d for d in docs if d["arm"] == arm]
        row = {k: t_interval([d["final_sampled"][k] for d in mine if k in d["final_sampled"]]).as_dict()
               for k in FINAL_KEYS}
        unneeded = {d["seed"]: {p: xs for p, xs in d["per_prompt"]["called"].items() if not d["needs_tool"][p]}
                    for d in mine}
        row["unnecessary_tool_rate_bootstrap"] = cluster_bootstrap(unneeded, n_boot=1000).as_dict()
        row["collapses"] = sum(d["final_sampled"].get("necessary_tool_rate", 1.0) < 0.1 for d in mine)
        row["seeds"] = len(mine)
        table[arm] = row
    if "hdpo_w0.15" in table:
        base = table["hdpo_w0.15"]
        for arm, row in table.items():
            row["collapse_p_vs_hdpo"] = fisher_exact(row["collapses"], row["seeds"], base["collapses"], base["seeds"])
    result = {"verdicts": v, "arms": table}
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# The deciding miniature: results", "",
             "Generated by `python experiments/miniature/decide_report.py` from `decide/*.json`; rules in "
             "`DECISION_RULES.md`. Primary endpoint: the final policy sampled at T = 1 (4 samples, 64 val prompts).", "",
             "| claim | verdict | contrasts (mean [95 % CI], Holm p) |", "|---|---|---|"]
    for name, x in v.items():
        parts = "; ".join(f"{c['name']}: {c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}], p={c['p_holm']:.3g}"
                          for c in x["contrasts"])
        lines.append(f"| {name} | **{x['verdict']}** | {parts} |")
    lines += ["", "| arm | seeds | " + " | ".join(FINAL_KEYS) + " | collapses |",
              "|---|---|" + "---|" * len(FINAL_KEYS) + "---|"]
    for arm, row in table.items():
        cells = [f"{row[k]['mean']:.2f} ± {(row[k]['hi'] - row[k]['lo']) / 2:.2f}" for k in FINAL_KEYS]
        lines.append(f"| `{arm}` | {row['seeds']} | " + " | ".join(cells) + f" | {row['collapses']} |")
    out_md.write_text("\n".join(lines) + "\n")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--collect", default=None, help="a sweep's output folder to read runs from first")
    p.add_argument("--data", default=str(HERE / "decide"))
    args = p.parse_args(argv)
    data = Path(args.data)
    if args.collect:
        print(f"collected {collect(Path(args.collect), data)} runs into {data}")
    docs = load(data)
    if not docs:
        print(f"no per-run files in {data}", file=sys.stderr)
        return 1
    result = report(docs, HERE / "DECIDE.md", data / "verdicts.json")
    print(json.dumps({k: x["verdict"] for k, x in result["verdicts"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
