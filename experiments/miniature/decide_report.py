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
    if (runs / "times.tsv").exists():  # the command's own timings: the budget's record
        (out / "times.tsv").write_text((runs / "times.tsv").read_text())
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
    seeds = sorted({d["seed"] for d in docs})
    lines += ["", "Per seed, the values behind each contrast (paired differences for claims 1 and 2; HDPO's "
              "curriculum statistics for claim 3):", "", "| contrast | " + " | ".join(f"seed {s}" for s in seeds)
              + " |", "|---|" + "---|" * len(seeds)]
    for x in v.values():
        for c in x["contrasts"]:
            lines.append(f"| {c['name']} | " + " | ".join(f"{c['per_seed'][str(s)]:+.3f}" if str(s) in c["per_seed"]
                                                         else "" for s in seeds) + " |")
    lines += ["", "Final policy per run (unnecessary-call rate / necessary-call rate / tool-needed accuracy); "
              "a collapse of needed calls (necessary < 0.1) in bold:", "",
              "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for arm in arms:
        cells = []
        for s in seeds:
            f = next((d["final_sampled"] for d in docs if d["arm"] == arm and d["seed"] == s), None)
            cell = (f"{f['unnecessary_tool_rate']:.2f} / {f['necessary_tool_rate']:.2f} / {f['accuracy_tool_needed']:.2f}"
                    if f else "")
            cells.append(f"**{cell}**" if f and f["necessary_tool_rate"] < 0.1 else cell)
        lines.append(f"| `{arm}` | " + " | ".join(cells) + " |")
    lines += ["", "Per arm, mean ± the half-width of the 95 % t-interval over seeds:", "",
              "| arm | seeds | " + " | ".join(FINAL_KEYS) + " | collapses |",
              "|---|---|" + "---|" * len(FINAL_KEYS) + "---|"]
    for arm, row in table.items():
        cells = [f"{row[k]['mean']:.2f} ± {(row[k]['hi'] - row[k]['lo']) / 2:.2f}" for k in FINAL_KEYS]
        lines.append(f"| `{arm}` | {row['seeds']} | " + " | ".join(cells) + f" | {row['collapses']} |")
    lines += secondary_lines(docs, result, out_json.parent, out_md.parent)
    out_md.write_text("\n".join(lines) + "\n")
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _mean_curve(docs: list[dict], key: str, window: int = 3) -> tuple[list[float], list[float]]:
    """Seed-mean of a per-step curve (trailing mean of ``window`` steps), over the steps every run has."""
    import numpy as np

    n = min(len(d["curves"].get(key, [])) for d in docs)
    if n == 0:
        return [], []
    m = np.nanmean(np.array([d["curves"][key][:n] for d in docs], dtype=float), axis=0)
    sm = [float(np.nanmean(m[max(0, i - window + 1):i + 1])) for i in range(n)]
    return docs[0]["curves"]["step"][:n], sm


def plot_curves(docs: list[dict], path: Path) -> None:
    """Seed-mean training curves per arm: accuracy, unneeded and needed call rates, rho_Q (own and shadow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("accuracy", "sampled training accuracy"), ("unnecessary_tool_rate", "unnecessary-call rate"),
            ("necessary_tool_rate", "necessary-call rate"), ("shadow_rho_Q", "shadow rho_Q (HDPO's, on each arm)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (key, title) in zip(axes.flat, keys):
        for arm in ARMS:
            mine = [d for d in docs if d["arm"] == arm]
            if mine:
                x, y = _mean_curve(mine, key)
                ax.plot(x, y, label=arm, lw=2 if arm.startswith("hdpo_w0.15") and "allavg" not in arm else 1)
        ax.set_title(title + " (seed mean, trailing 3)")
        ax.set_ylim(-0.02, 1.02)
    axes[1, 0].set_xlabel("RL step")
    axes[1, 1].set_xlabel("RL step")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def secondary_lines(docs: list[dict], result: dict, data: Path, figures: Path) -> list[str]:
    """The secondary analyses of DECISION_RULES.md section 4 (reported, not decisive); adds them to ``result``."""
    import math

    from metis.analysis.stats import paired_difference, spearman

    table = result["arms"]
    lines = ["", "## Secondary (reported, not decisive)", "",
             "Rollout-level unnecessary-call rate, two-level cluster bootstrap (seeds, then prompts); collapses "
             "of needed calls (necessary-call rate < 0.1 at the end) per arm with Fisher's exact p, one-sided (the arm collapses more often than HDPO):", "",
             "| arm | unnecessary (bootstrap 95 %) | collapses | Fisher p vs HDPO |", "|---|---|---|---|"]
    for arm, row in table.items():
        b = row["unnecessary_tool_rate_bootstrap"]
        fisher = "—" if arm == "hdpo_w0.15" else f"{row.get('collapse_p_vs_hdpo', float('nan')):.3g}"
        lines.append(f"| `{arm}` | {b['mean']:.2f} [{b['lo']:.2f}, {b['hi']:.2f}] | {row['collapses']}/{row['seeds']} "
                     f"| {fisher} |")
    greedy_keys = ["accuracy", "unnecessary_tool_rate", "necessary_tool_rate"]
    lines += ["", "Greedy evaluation of the same final policies (secondary endpoint), mean over seeds:", "",
              "| arm | " + " | ".join(greedy_keys) + " |", "|---|" + "---|" * len(greedy_keys)]
    result["greedy"] = {}
    for arm in table:
        g = [d["final_greedy"] for d in docs if d["arm"] == arm and d.get("final_greedy")]
        if g:
            means = {k: sum(x[k] for x in g) / len(g) for k in greedy_keys if all(k in x for x in g)}
            result["greedy"][arm] = means
            lines.append(f"| `{arm}` | " + " | ".join(f"{means.get(k, float('nan')):.2f}" for k in greedy_keys) + " |")
    # shadow rho_Q: is the link rho_Q ~ accuracy mechanical? Spearman over all steps, per run
    lines += ["", "Shadow rho_Q (HDPO's efficiency advantages on each arm's own rollouts): Spearman(shadow rho_Q, "
              "sampled training accuracy) over all steps, per run, mean and 95 % interval over seeds. If GRPO's "
              "link is as strong as HDPO's, the rho_Q-accuracy link of claim 3 is mechanical.", "",
              "| arm | Spearman(shadow rho_Q, accuracy) |", "|---|---|"]
    result["shadow_link"] = {}
    for arm in table:
        vals = [spearman(d["curves"]["accuracy"], d["curves"]["shadow_rho_Q"]) for d in docs if d["arm"] == arm]
        ci = t_interval([v for v in vals if not math.isnan(v)]).as_dict()
        result["shadow_link"][arm] = ci
        lines.append(f"| `{arm}` | {ci['mean']:.2f} [{ci['lo']:.2f}, {ci['hi']:.2f}] |")
    if "hdpo_w0.15" in table and "hdpo_w0.15_allavg" in table:
        lines += ["", "`hdpo_w0.15_allavg` − `hdpo_w0.15` (the tool term averaged over all rollouts vs over its "
                  "non-zero ones), paired by seed:", "", "| quantity | difference [95 %] |", "|---|---|"]
        result["allavg_minus_hdpo"] = {}
        for k in FINAL_KEYS:
            a = {d["seed"]: d["final_sampled"][k] for d in docs if d["arm"] == "hdpo_w0.15_allavg"}
            b = {d["seed"]: d["final_sampled"][k] for d in docs if d["arm"] == "hdpo_w0.15"}
            ci, _ = paired_difference(a, b)
            result["allavg_minus_hdpo"][k] = ci.as_dict()
            lines.append(f"| {k} | {ci.mean:+.3f} [{ci.lo:+.3f}, {ci.hi:+.3f}] |")
    sim_path = data / "simulator.json"
    if sim_path.exists():
        sim = json.loads(sim_path.read_text())
        lines += ["", f"## The simulator's prediction for this cold start ({sim['candidate']})", "",
                  "`simulate_calibrated.py`: the tabular simulator with the cold start's measured success table "
                  "(P(correct | no call), P(correct | a call) per kind of prompt: "
                  + "; ".join(f"{c['name']} {c['p'][0]:.2f} / {c['p'][1]:.2f}" for c in sim["scenario"]["sim"]["classes"])
                  + f") and start call rate {sim['start_call_rate']:.2f}, the miniature's batch, the same rules.", ""]
        horizons = sim.get("horizons") or {str(sim["steps"]): sim}
        for steps, h in horizons.items():
            lines += [f"{steps} simulated steps, verdicts: "
                      + ", ".join(f"{k} **{v}**" for k, v in h["verdicts"].items()) + ".", "",
                      "| arm | accuracy | needed accuracy | unnecessary | necessary |", "|---|---|---|---|---|"]
            for arm, f in h["final_mean"].items():
                lines.append(f"| `{arm}` | {f['accuracy']:.2f} | {f['accuracy_tool_needed']:.2f} | "
                             f"{f['unnecessary_tool_rate']:.2f} | {f['necessary_tool_rate']:.2f} |")
            lines.append("")
        result["simulator_verdicts"] = {k: h["verdicts"] for k, h in horizons.items()}
    times = data / "times.tsv"
    if times.exists():
        rows = [r.split("\t") for r in times.read_text().splitlines() if r.strip()]
        total = [int(r[2]) for r in rows if r[0] == "total"]
        parts = {r[0]: int(r[2]) for r in rows if r[0] in ("calibrate", "preflight")}
        rl = [int(r[2]) for r in rows if r[0].startswith("rl_")]
        result["budget_s"] = {"total": total[-1] if total else None, **parts, "rl_runs": len(rl),
                              "rl_run_mean": sum(rl) / len(rl) if rl else None}
        lines += ["", "## Budget", "", f"From `decide/times.tsv` (the command's own record): "
                  + (f"total **{total[-1]} s** against 5400 s; " if total else "no total recorded; ")
                  + ", ".join(f"{k} {v} s" for k, v in parts.items())
                  + (f"; {len(rl)} RL runs with their evaluations, {sum(rl) / len(rl):.0f} s each, two at a time."
                     if rl else ".")]
    plot_curves(docs, figures / "decide_curves.png")
    lines += ["", "![curves](decide_curves.png)"]
    return lines


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
