"""The real CLI on the tiny model: a bare `python -m metis.train` (shortened) end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metis.utils.wandb_offline import read_config, read_history

ROOT = Path(__file__).resolve().parents[1]
LOGGED = ["train/accuracy", "train/format_rate", "train/tool_call_rate", "train/mean_tool_calls", "train/rho_Q",
          "train/loss/acc", "train/loss/tool", "train/clip_frac/acc", "train/clip_frac/tool",
          "train/response_length", "train/frac_reward_zero_std", "val/accuracy", "val/tool_call_rate"]


def run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, METIS_CACHE=str(tmp_path / "cache"), WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "metis.train", "experiment=hdpo_tiny", f"hydra.run.dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_bare_train_runs_and_leaves_wandb_history_and_checkpoint(tmp_path):
    out = run_cli(tmp_path, "trainer.max_steps=2", "data.val_prompts=2")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "W&B run" in out.stdout and "checkpoint" in out.stdout
    # the summary: validation before -> after (step-0 validation), the curves' command; a sane bar, no adverts
    assert "val accuracy" in out.stdout and " -> " in out.stdout and "python -m metis.dashboard" in out.stdout
    assert "RL step" in out.stdout and "/1073741823" not in out.stdout and "Tip:" not in out.stdout + out.stderr
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "hf" / "config.json").exists() and (run_dir / "rollouts" / "train.jsonl").exists()
    wandb_run = next((run_dir / "wandb").glob("offline-run-*"))
    history = read_history(wandb_run)
    keys = set().union(*history)
    missing = [k for k in LOGGED if k not in keys]
    assert not missing, f"not in the W&B history: {missing}"
    steps = [row["train/rl_step"] for row in history if "train/rl_step" in row]
    assert steps == [1.0, 2.0]
    config = read_config(wandb_run)
    assert config["reward"]["name"] == "hdpo" and config["reward"]["w_tool"] == 0.15
