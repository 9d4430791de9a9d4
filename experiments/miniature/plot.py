"""Summary table and plots of the miniature sweep, from the runs' offline W&B logs.

    python experiments/miniature/plot.py --runs runs/miniature --out experiments/miniature

Reads every ``<runs>/rl/<i>/`` (``config.yaml`` for the arm and seed, ``wandb/offline-run-*`` via
``metis.utils.wandb_offline.read_history``), ``<runs>/sft_eval*.json`` (the cold start) and
``<runs>/times.tsv``. Writes ``summary.md`` / ``summary.csv`` (final held-out val/* metrics, mean ±
std over seeds, with the scheme simulator's prediction next to each arm), ``curves.png`` (held-out
accuracy on tool-needed / tool-unneeded samples and unnecessary / necessary tool-call rates against
the RL step, seed means per arm), ``train_curves.png`` (the same on the training rollouts, plus
rho_Q) and ``rhoq_vs_accuracy.png`` (rho_Q against training accuracy, per arm).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from metis.utils.wandb_offline import read_history

ARMS = ["grpo", "coupled_a0.05", "coupled_a0.15", "coupled_a1", "coupled_penalty", "normalize_then_sum",
        "hdpo_w0.10", "hdpo_w0.15", "hdpo_w0.20"]
METRICS = ["accuracy", "accuracy_tool_needed", "accuracy_tool_unneeded", "unnecessary_tool_rate",
           "necessary_tool_rate", "mean_tool_calls"]
# experiments/simulator/README.md, scenario `flat_after_one` (tool-free class solvable without a
# call, tool class needs one call, extra calls worth nothing: the structure of `marker`),
# 300 tabular updates from P(call) = 0.95: final unnecessary / necessary tool rate, and the
# `weak_model` scenario (few correct rollouts) where it differs. Rows marked * were run for this
# report with `python -m metis.simulate sim=flat_after_one reward=... ` (5 seeds).
SIMULATOR = {
    "grpo": "unnec 0.955, nec 0.998: keeps the cold-start habit",
    "coupled_a0.05": "unnec 0.037, nec 0.999 (*; < 0.1 at step 213 ± 53, slowest coupled arm)",
    "coupled_a0.15": "unnec 0.010 (< 0.1 at step 127); weak_model: 0.92 left",
    "coupled_a1": "unnec 0.003 (< 0.1 at step 45), nec 0.999: gated, keeps needed calls",
    "coupled_penalty": "lam 0.05: unnec 0.40 ± 0.45 (3/5 seeds < 0.1)",
    "normalize_then_sum": "unnec 0.008 (< 0.1 at step 122), nec 0.999",
    "hdpo_w0.10": "unnec 0.001, nec 1.000 (*; < 0.1 at step 131 ± 7)",
    "hdpo_w0.15": "unnec 0.000 (< 0.1 at step 86), nec 1.000; weak_model: same at 92",
    "hdpo_w0.20": "unnec 0.000, nec 1.000 (*; < 0.1 at step 63 ± 3)",
}


def load_runs(runs: Path) -> list[dict]:
    out = []
    for d in sorted((runs / "rl").glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else 10**9):
        cfg_file = d / "config.yaml"
        wandb_runs = sorted((d / "wandb").glob("offline-run-*"))
        if not cfg_file.exists() or not wandb_runs:
            continue
        cfg = yaml.safe_load(cfg_file.read_text())
        arm = cfg["experiment_name"].removeprefix("miniature_")
        history = read_history(wandb_runs[-1])
        train = [r for r in history if "train/rl_step" in r]
        val = [r for r in history if "val/accuracy" in r]
        # a val row belongs to the RL step just done: its trainer/global_step is that step - 1
        # (train rows log train/rl_step = global_step + 1)
        for r in val:
            r["rl_step"] = r["trainer/global_step"] + 1 if "trainer/global_step" in r else r.get("_step")
        final_eval = d / "final_eval.json"
        out.append({"dir": str(d), "arm": arm, "seed": cfg["seed"], "train": train, "val": val,
                    "final": json.loads(final_eval.read_text()) if final_eval.exists() else None,
                    "finished": (d / "hf" / "config.json").exists(), "max_steps": cfg["trainer"]["max_steps"]})
    return out


def mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(ms: tuple[float, float]) -> str:
    m, s = ms
    return "–" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"


def first_below(rows: list[dict], key: str, thr: float) -> float | None:
    for r in rows:
        if key in r and r[key] < thr:
            return r["rl_step"]
    return None


def curve(runs: list[dict], split: str, key: str) -> tuple[list[float], list[float]]:
    by_step = defaultdict(list)
    for run in runs:
        for r in run[split]:
            if key in r:
                by_step[r["rl_step"] if split == "val" else r["train/rl_step"]].append(r[key])
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", default="runs/miniature")
    p.add_argument("--out", default="experiments/miniature")
    args = p.parse_args(argv)
    runs_dir, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(runs_dir)
    by_arm = defaultdict(list)
    for r in runs:
        if r["val"]:
            by_arm[r["arm"]].append(r)
    arms = [a for a in ARMS if a in by_arm] + sorted(a for a in by_arm if a not in ARMS)

    times = {}
    if (runs_dir / "times.tsv").exists():
        for line in (runs_dir / "times.tsv").read_text().splitlines():
            name, what, secs = line.split("\t")
            times[name] = (what, float(secs))
    rl_times = [s for n, (_, s) in times.items() if n.startswith("rl_")]

    rows = []
    for arm in arms:
        rs = by_arm[arm]
        # final policy: greedy on the 64 val prompts (final_eval.json) where present, else the last val/*
        final = {m: mean_std([r["final"].get(m, float("nan")) if r["final"] else r["val"][-1].get(f"val/{m}", float("nan"))
                              for r in rs]) for m in METRICS}
        rho = mean_std([statistics.fmean([t.get("train/rho_Q", 0.0) for t in r["train"]]) for r in rs])
        reach = [first_below(r["val"], "val/unnecessary_tool_rate", 0.1) for r in rs]
        rows.append({"arm": arm, "seeds": len(rs), "steps": rs[0]["val"][-1]["rl_step"],
                     **{m: final[m] for m in METRICS}, 
                     "rho_Q_mean": rho, "unnec_lt_0.1_at": [x for x in reach],
                     "simulator": SIMULATOR.get(arm, "")})

    sft = {}
    for name in ("sft_eval", "sft_eval_notools"):
        f = runs_dir / f"{name}.json"
        if f.exists():
            sft[name] = json.loads(f.read_text())

    with open(out / "summary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arm", "seeds", "steps"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
                   + ["rho_Q_mean", "rho_Q_std", "simulator"])
        for r in rows:
            w.writerow([r["arm"], r["seeds"], r["steps"]] + [f"{v:.4f}" for m in METRICS for v in r[m]]
                       + [f"{r['rho_Q_mean'][0]:.4f}", f"{r['rho_Q_mean'][1]:.4f}", r["simulator"]])

    lines = ["# Miniature sweep: measured (held-out val split, 64 prompts, greedy, final policy)", ""]
    for name, label in (("sft_eval", "SFT cold start, python tool"), ("sft_eval_notools", "no-tool control (SFT on direct answers only)")):
        if name in sft:
            e = sft[name]
            lines.append(f"- {label} (n={e['n']}): accuracy {e['accuracy']:.3f}, tool-needed "
                         f"{e.get('accuracy_tool_needed', float('nan')):.3f}, tool-unneeded "
                         f"{e.get('accuracy_tool_unneeded', float('nan')):.3f}, unnecessary tool rate "
                         f"{e.get('unnecessary_tool_rate', float('nan')):.3f}, necessary tool rate "
                         f"{e.get('necessary_tool_rate', float('nan')):.3f}, mean calls {e['mean_tool_calls']:.2f}")
    if rl_times:
        lines.append(f"- RL run wall time: mean {statistics.fmean(rl_times):.0f} s, min {min(rl_times):.0f}, "
                     f"max {max(rl_times):.0f} ({len(rl_times)} runs)")
    for key in ("sft", "total"):
        if key in times:
            lines.append(f"- {key} wall time: {times[key][1]:.0f} s")
    lines += ["", "| arm | seeds | steps | acc | acc tool-needed | acc tool-unneeded | unnec. rate "
              "| nec. rate | mean calls | rho_Q (train mean) | val step unnec<0.1 | simulator (flat_after_one) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reach = ", ".join("–" if x is None else str(int(x)) for x in r["unnec_lt_0.1_at"])
        lines.append(f"| `{r['arm']}` | {r['seeds']} | {int(r['steps'])} | {fmt(r['accuracy'])} | "
                     f"{fmt(r['accuracy_tool_needed'])} | {fmt(r['accuracy_tool_unneeded'])} | "
                     f"{fmt(r['unnecessary_tool_rate'])} | "
                     f"{fmt(r['necessary_tool_rate'])} | {fmt(r['mean_tool_calls'])} | {fmt(r['rho_Q_mean'])} | "
                     f"{reach} | {r['simulator']} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(ARMS, plt.cm.tab10.colors))

    def panel_grid(split: str, keys: list[str], fname: str, title: str) -> None:
        fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
        for ax, key in zip(axes[0], keys):
            for arm in arms:
                xs, ys = curve(by_arm[arm], split, f"{split}/{key}")
                if xs:
                    ax.plot(xs, ys, marker="o" if split == "val" else None, ms=3, label=arm,
                            color=colors.get(arm), ls="--" if arm.startswith("coupled") else "-")
            if split == "val" and "sft_eval" in sft and key in sft["sft_eval"]:
                ax.plot([0], [sft["sft_eval"][key]], "k*", ms=10, label="SFT cold start")
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("RL step")
            ax.set_ylim(-0.03, 1.03 if key != "mean_tool_calls" else None)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)

    panel_grid("val", ["accuracy_tool_needed", "accuracy_tool_unneeded", "unnecessary_tool_rate",
                       "necessary_tool_rate"], "curves.png",
               "held-out (val split, greedy): seed means per arm")
    panel_grid("train", ["accuracy_tool_needed", "accuracy_tool_unneeded", "unnecessary_tool_rate",
                         "necessary_tool_rate", "rho_Q"], "train_curves.png",
               "training rollouts (sampled, G=4): seed means per arm")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for arm in arms:
        xs, acc = curve(by_arm[arm], "train", "train/accuracy")
        _, rho = curve(by_arm[arm], "train", "train/rho_Q")
        if not xs:
            continue
        k = 3  # moving average over RL steps (the batches are 16 rollouts)
        sm = lambda v: [statistics.fmean(v[max(0, i - k + 1): i + 1]) for i in range(len(v))]  # noqa: E731
        axes[0].plot(sm(acc), sm(rho), marker=".", label=arm, color=colors.get(arm))
        axes[1].plot(xs, sm(rho), label=arm, color=colors.get(arm))
    axes[0].set_xlabel("train accuracy (3-step avg)")
    axes[0].set_ylabel("rho_Q (3-step avg)")
    axes[1].set_xlabel("RL step")
    axes[1].set_ylabel("rho_Q (3-step avg)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle("rho_Q (fraction of rollouts with a non-zero efficiency advantage) vs accuracy", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "rhoq_vs_accuracy.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
