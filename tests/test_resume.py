"""A run killed with SIGKILL mid-step and resumed continues exactly as an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["experiment=hdpo_tiny", "trainer.max_steps=4", "callbacks.checkpoint.every_n_train_steps=1", "trainer.val_check_interval=null",
          "data.source.n_train=6", "data.prompts_per_step=2", "module.lr=1e-2", "rollout.n=2",
          "rollout.loop.max_new_tokens=24", "rollout.loop.max_response_tokens=96", "logger=csv"]


def train(run_dir: Path, cache: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, METIS_CACHE=str(cache))
    if kill_at is not None:  # a test-side callback (tests/fault_injection.py) SIGKILLs the run mid-step
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
        extra = (*extra, "+callbacks.kill._target_=fault_injection.KillMidStep", f"+callbacks.kill.step={kill_at}")
    return subprocess.run([sys.executable, "-m", "metis.train", f"hydra.run.dir={run_dir}", *COMMON, *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def steps(run_dir: Path) -> dict[int, list]:
    """Per RL step: the prompts trained on and the rewards/advantages they got."""
    out: dict[int, list] = {}
    for line in (run_dir / "rollouts" / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["rl_step"], []).append((rec["task_id"], rec["response"], rec["adv_acc"]))
    return out


@pytest.mark.timeout(900)
def test_sigkill_mid_step_then_resume_is_bit_identical(tmp_path):
    cache = tmp_path / "cache"
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert train(straight, cache).returncode == 0
    killed = train(broken, cache, kill_at=3)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL inside step 3
    assert (broken / "checkpoints" / "last.ckpt").exists()
    # plain types only: loads weights-only (as Lightning's distributed-checkpoint path requires)
    ckpt = torch.load(broken / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["metis"]["rl_step"] == 2 and ckpt["PromptDataModule"]["sampler"]["consumed"] == 4
    resumed = train(broken, cache, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = steps(straight), steps(broken)
    assert sorted(a) == [1, 2, 3, 4] and sorted(b) == [1, 2, 3, 4]  # step 3 redone once, nothing replayed
    for step in a:
        assert a[step] == b[step], f"step {step} differs"
    wa, wb = load_file(straight / "hf" / "model.safetensors"), load_file(broken / "hf" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_sigusr1_after_fit_is_logged_not_fatal(caplog):
    """SLURM's --signal=USR1@120 may land after fit (while the run exports); the run must finish."""
    import logging
    import os
    import signal

    from metis.launch.run import _ignore_late_requeue_signal

    before = signal.getsignal(signal.SIGUSR1)
    try:
        _ignore_late_requeue_signal()
        with caplog.at_level(logging.WARNING, logger="metis"):
            os.kill(os.getpid(), signal.SIGUSR1)  # the default action would end this process
        assert any("after training finished" in r.getMessage() for r in caplog.records)
    finally:
        signal.signal(signal.SIGUSR1, before)
