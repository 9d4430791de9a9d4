"""Collect the first-run calibration runs (experiment=hdpo_marker with lr / w_tool / seed / steps
overrides) into runs.json: per run its settings, the greedy validations and the sampled training
rates averaged over the first and last 8 RL steps.

    python experiments/first_run/collect.py <run dir> [<run dir> ...] > experiments/first_run/runs.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from metis.dashboard.runs import load_run  # noqa: E402
from metis.utils.metrics import window_mean  # noqa: E402

VAL = ("val/accuracy", "val/unnecessary_tool_rate", "val/necessary_tool_rate")
TRAIN = ("train/accuracy", "train/unnecessary_tool_rate", "train/necessary_tool_rate")


def one(run: Path) -> dict:
    data = load_run(run)  # config + logged rows with their RL step (the dashboard's reader)
    cfg = data.config
    val = [{"rl_step": int(r["rl_step"]), **{k: r[k] for k in VAL if k in r}} for r in data.rows if "val/accuracy" in r]
    train = [r for r in data.rows if "train/rl_step" in r and "train/accuracy" in r]
    return {"run": run.name, "seed": cfg["seed"], "lr": cfg["module"]["lr"], "w_tool": cfg["reward"]["w_tool"],
            "steps": cfg["trainer"]["max_steps"], "init_from": Path(cfg["model"]["init_from"]).name,
            "val": val, "train_first8": window_mean(train[:8], TRAIN), "train_last8": window_mean(train[-8:], TRAIN)}


if __name__ == "__main__":
    print(json.dumps([one(Path(p)) for p in sys.argv[1:]], indent=1))
