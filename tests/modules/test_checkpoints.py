"""Complete checkpoints only, bounded retention, and the pre-emption callback's protocol."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from metis.utils.checkpoints import (MarkedCheckpoint, Preemption, complete_checkpoints, latest_complete, preempted,
                                     remove_checkpoint, write_marker)
from metis.launch.run import _resolve_ckpt


def fake_ckpt(directory: Path, name: str, step: int | None, is_dir: bool = False) -> Path:
    path = directory / name
    if is_dir:  # a distributed (sharded) checkpoint is a directory
        path.mkdir(parents=True)
        (path / "shard0").write_text("x")
    else:
        path.write_text("x")
    if step is not None:
        write_marker(path, step)
    return path


def test_resume_uses_the_newest_complete_checkpoint_only(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    fake_ckpt(ckpts, "step=10.ckpt", 10)
    fake_ckpt(ckpts, "step=20.ckpt", 20, is_dir=True)
    fake_ckpt(ckpts, "step=30.ckpt", None)  # cut short: no marker
    assert _resolve_ckpt("last", tmp_path) == str(ckpts / "step=20.ckpt")
    assert _resolve_ckpt("some/path.ckpt", tmp_path) == "some/path.ckpt"
    write_marker(ckpts / "step=30.ckpt", 30)
    assert latest_complete(ckpts) == ckpts / "step=30.ckpt"
    remove_checkpoint(ckpts / "step=30.ckpt")
    assert not (ckpts / "step=30.ckpt").exists() and latest_complete(ckpts) == ckpts / "step=20.ckpt"
    assert _resolve_ckpt("last", tmp_path / "nothing") is None


def test_marker_without_checkpoint_or_unreadable_is_ignored(tmp_path):
    write_marker(tmp_path / "gone.ckpt", 5)
    (tmp_path / "bad.ckpt").write_text("x")
    Path(f"{tmp_path / 'bad.ckpt'}.complete").write_text("{not json")
    assert complete_checkpoints(tmp_path) == [] and latest_complete(tmp_path) is None


def test_retention_keeps_the_newest_periodic_checkpoints(tmp_path):
    for step in (10, 20, 30, 40):
        fake_ckpt(tmp_path, f"step={step}.ckpt", step)
    fake_ckpt(tmp_path, "last.ckpt", 40)
    fake_ckpt(tmp_path, "preempt.ckpt", 35)
    cb = MarkedCheckpoint(dirpath=str(tmp_path), keep_last=2, every_n_train_steps=10, save_top_k=-1)
    cb._apply_retention()
    left = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert left == ["last.ckpt", "preempt.ckpt", "step=30.ckpt", "step=40.ckpt"]
    assert not Path(f"{tmp_path / 'step=10.ckpt'}.complete").exists()
    with pytest.raises(ValueError, match="keep_last"):
        MarkedCheckpoint(dirpath=str(tmp_path), keep_last=0)


class FakeStrategy:
    def __init__(self, others_signalled: bool):
        self.others = others_signalled
        self.calls: list[str] = []

    def reduce_boolean_decision(self, decision, all=True):
        self.calls.append("reduce")
        return decision or self.others

    def barrier(self, name=None):
        self.calls.append("barrier")


class FakeTrainer:
    def __init__(self, others_signalled=False):
        self.strategy = FakeStrategy(others_signalled)
        self.is_global_zero, self.global_step, self.should_stop = True, 7, False
        self.saved: list[str] = []

    def save_checkpoint(self, path):
        self.strategy.calls.append("save")
        Path(path).write_text("x")


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_sigusr1_only_sets_a_flag_and_the_ranks_save_together_at_the_step_boundary(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cb = Preemption(str(tmp_path / "checkpoints"))
    trainer = FakeTrainer()
    cb.setup(trainer, None, "fit")
    try:
        cb.on_train_batch_end(trainer, None, None, None, 0)
        assert trainer.strategy.calls == ["reduce"] and not trainer.should_stop  # nobody signalled
        os.kill(os.getpid(), signal.SIGUSR1)  # arrives "mid-step": the handler saves nothing
        assert cb.requested and trainer.strategy.calls == ["reduce"]
        cb.on_train_batch_end(trainer, None, None, None, 1)
        assert trainer.strategy.calls == ["reduce", "reduce", "barrier", "save", "barrier"]
        assert trainer.should_stop and cb.saved == tmp_path / "checkpoints" / "preempt.ckpt"
        assert json.loads(Path(f"{cb.saved}.complete").read_text())["global_step"] == 7
        assert latest_complete(tmp_path / "checkpoints") == cb.saved
        trainer.callbacks = [cb]
        assert preempted(trainer)  # no final checkpoint and no export after it: the requeued job does them
    finally:
        cb.teardown(trainer, None, "fit")
    # a rank that got no signal follows the one that did (the all-reduce is an "any")
    other = Preemption(str(tmp_path / "other"))
    trainer = FakeTrainer(others_signalled=True)
    other.on_train_batch_end(trainer, None, None, None, 0)
    assert trainer.should_stop and "save" in trainer.strategy.calls


@pytest.mark.timeout(900)
def test_two_ranks_preempted_on_one_rank_save_together_and_resume(tmp_path, tiny_cache):
    import subprocess
    import sys

    script = Path(__file__).resolve().parent / "preempt_run.py"
    out, run_dir = tmp_path / "out.json", tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(out), f"{tiny_cache}/tiny", str(run_dir)],
                          capture_output=True, text=True, timeout=850, cwd=script.parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert [r["first"]["requested"] for r in ranks] == [False, True]  # only rank 1 got the signal
    for r in ranks:  # both stopped after step 2 (the step in progress finished) and saved the same file
        assert r["first"]["global_step"] == 2 and r["first"]["rl_step"] == 2
        assert r["first"]["saved"] == str(run_dir / "checkpoints" / "preempt.ckpt") == r["found"]
        assert r["resumed"] == {"global_step": 3, "rl_step": 3}  # resumed at step 2, one more step


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_a_signal_during_model_building_preempts_at_the_first_step_boundary(tmp_path):
    from metis.utils import checkpoints

    before = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        checkpoints.catch_early_signal()  # what prepare_run does first
        os.kill(os.getpid(), signal.SIGUSR1)  # the default action would have killed this process
        cb = Preemption(str(tmp_path / "checkpoints"))
        trainer = FakeTrainer()
        cb.setup(trainer, None, "fit")
        try:
            assert cb.requested
            cb.on_train_batch_end(trainer, None, None, None, 0)
            assert trainer.should_stop and cb.saved is not None
        finally:
            cb.teardown(trainer, None, "fit")
        again = Preemption(str(tmp_path / "again"))  # the early signal is consumed once
        again.setup(trainer, None, "fit")
        again.teardown(trainer, None, "fit")
        assert not again.requested
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_preempted_run_closes_its_loggers_before_the_requeue_and_skips_the_export(tmp_path, monkeypatch):
    """SLURM kills the job as it requeues it: the W&B run must be finished first, and no export."""
    from metis.launch import run as run_mod
    from metis.utils import checkpoints

    events: list[str] = []
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setattr(checkpoints.subprocess, "run",
                        lambda cmd, **kw: events.append(" ".join(cmd)) or SimpleNamespace(returncode=0, stderr=""))
    cb = Preemption(str(tmp_path / "checkpoints"))
    cb.saved = tmp_path / "checkpoints" / "preempt.ckpt"
    experiment = SimpleNamespace(dir=str(tmp_path / "wandb"), finish=lambda: events.append("wandb finish"))
    trainer = SimpleNamespace(callbacks=[cb], callback_metrics={}, global_rank=0, global_step=7,
                              loggers=[SimpleNamespace(experiment=experiment)], checkpoint_callbacks=[])
    module = SimpleNamespace(export_pretrained=lambda path: events.append("export"))
    run = run_mod.Run(cfg=None, output_dir=tmp_path, ckpt_path=None)
    run_mod.finish_run(run, trainer, module)
    assert events == ["wandb finish", "scontrol requeue 4242"]
