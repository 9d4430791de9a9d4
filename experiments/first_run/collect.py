"""Collect the first-run calibration runs (experiment=hdpo_marker with lr / w_tool / seed / steps
overrides) into runs.json: per run its settings, the greedy validations and the sampled training
rates averaged over the first and last 8 RL steps.

    python experiments/first_run/collect.py <run dir> [<run dir> ...] > experiments/first_run/runs.json
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from metis.utils.wandb_offline import read_history  # noqa: E402

VAL = ("val/accuracy", "val/unnecessary_tool_rate", "val/necessary_tool_rate")
TRAIN = ("train/accuracy", "train/unnecessary_tool_rate", "train/necessary_tool_rate")


def one(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    hist = read_history(Path(sorted(glob.glob(str(run / "wandb" / "offline-run-*")))[-1]))
    val = [{"rl_step": int(r.get("val/rl_step", r.get("train/rl_step", 0))), **{k: r[k] for k in VAL if k in r}}
           for r in hist if "val/accuracy" in r]
    train = [r for r in hist if "train/rl_step" in r and "train/accuracy" in r]

    def mean(rows):
        return {k: sum(r[k] for r in rows if k in r) / max(1, sum(k in r for r in rows)) for k in TRAIN}

    return {"run": run.name, "seed": cfg["seed"], "lr": cfg["module"]["lr"], "w_tool": cfg["reward"]["w_tool"],
            "steps": cfg["trainer"]["max_steps"], "init_from": Path(cfg["model"]["init_from"]).name,
            "val": val, "train_first8": mean(train[:8]), "train_last8": mean(train[-8:])}


if __name__ == "__main__":
    print(json.dumps([one(Path(p)) for p in sys.argv[1:]], indent=1))
