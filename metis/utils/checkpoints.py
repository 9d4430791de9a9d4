"""Checkpoints that are known to be complete, bounded retention, and pre-emption at a step boundary.

* :class:`MarkedCheckpoint` (Lightning's ``ModelCheckpoint``) writes ``<checkpoint>.complete``
  after every rank has finished writing a checkpoint, keeps only the newest ``keep_last``
  periodic ones (50-150 GB each at 8B) and saves the final state at the end of training.
* :func:`latest_complete` is what ``ckpt_path=last`` resumes from: the newest checkpoint with a
  marker; a checkpoint cut short (killed mid-write) has none and is skipped.
* :class:`Preemption`: SIGUSR1 (SLURM's warning before the time limit or a pre-emption) only
  sets a flag; at the next RL-step boundary the ranks agree on it (one all-reduce), save one
  checkpoint together and training stops. A save inside the signal handler would start a
  collective at an arbitrary point of a step. The requeue (``scontrol requeue``, rank 0) comes
  last, from ``metis.launch.run.finish_run`` once the loggers are closed: SLURM kills the job when
  it requeues it, and a W&B run still open then loses its last rows.
* :func:`catch_early_signal`, called first thing by the entry point, records a SIGUSR1 that
  arrives while the model is still being built (minutes at 8B); by default it would kill Python.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)

MARKER = ".complete"


def marker_of(path: str | Path) -> Path:
    return Path(f"{path}{MARKER}")


def write_marker(path: str | Path, step: int) -> None:
    marker_of(path).write_text(json.dumps({"global_step": int(step), "time": time.time()}))


def remove_checkpoint(path: str | Path) -> None:
    """Marker first (the checkpoint stops counting as complete), then the file or directory."""
    marker_of(path).unlink(missing_ok=True)
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def complete_checkpoints(directory: str | Path) -> list[tuple[int, float, Path]]:
    """``(global_step, time written, path)`` of every checkpoint in ``directory`` with a marker, oldest first."""
    found = []
    for marker in Path(directory).glob(f"*{MARKER}"):
        path = Path(str(marker)[: -len(MARKER)])
        if not path.exists():
            continue
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        found.append((int(info.get("global_step", -1)), float(info.get("time", 0.0)), path))
    return sorted(found)


def latest_complete(directory: str | Path) -> Path | None:
    """The newest complete checkpoint (highest step, then latest written); incomplete ones are logged."""
    directory = Path(directory)
    done = complete_checkpoints(directory)
    marked = {p for _, _, p in done}
    skipped = [p.name for p in directory.glob("*.ckpt") if p not in marked]
    if skipped:
        log.warning("ignoring checkpoints without a completion marker (cut short, or older format): %s",
                    ", ".join(sorted(skipped)))
    return done[-1][2] if done else None


class MarkedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with completion markers, ``keep_last`` retention and a final save.

    Args:
        keep_last: periodic checkpoints kept (the newest ones; ``None``: all). ``last`` links and
            the pre-emption checkpoint are not counted.
        save_final: save at the end of training when the last step was not saved yet.
    """

    def __init__(self, *args: Any, keep_last: int | None = None, save_final: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"callbacks.checkpoint.keep_last must be >= 1 or null, got {keep_last}")
        self.keep_last, self.save_final = keep_last, save_final

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            marker_of(filepath).unlink(missing_ok=True)
        super()._save_checkpoint(trainer, filepath)  # every rank writes; ends with a barrier
        trainer.strategy.barrier("MarkedCheckpoint.complete")
        if trainer.is_global_zero:
            write_marker(filepath, trainer.global_step)
            self._apply_retention()
        trainer.strategy.barrier("MarkedCheckpoint.retention")

    def _link_checkpoint(self, trainer, filepath: str, linkpath: str) -> None:
        ModelCheckpoint._link_checkpoint(trainer, filepath, linkpath)
        if trainer.is_global_zero and marker_of(filepath).exists():
            shutil.copyfile(marker_of(filepath), marker_of(linkpath))

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        if trainer.is_global_zero:
            marker_of(filepath).unlink(missing_ok=True)
        super()._remove_checkpoint(trainer, filepath)

    def _apply_retention(self) -> None:
        if self.keep_last is None or self.dirpath is None:
            return
        periodic = [(s, t, p) for s, t, p in complete_checkpoints(self.dirpath)
                    if not p.name.startswith(("last", Preemption.NAME)) and not p.is_symlink()]
        for _, _, path in periodic[: max(len(periodic) - self.keep_last, 0)]:
            log.info("checkpoint retention (keep_last=%d): removing %s", self.keep_last, path.name)
            remove_checkpoint(path)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_final and self.dirpath is not None and trainer.global_step > 0 \
                and trainer.global_step != self._last_global_step_saved and not preempted(trainer):
            path = os.path.join(self.dirpath, f"final-step={trainer.global_step}.ckpt")
            self._save_checkpoint(trainer, path)
        super().on_train_end(trainer, pl_module)


def preemption_of(trainer) -> "Preemption | None":
    """The Preemption callback that stopped training (its checkpoint is saved), else None."""
    return next((cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, Preemption) and cb.saved is not None),
                None)


def preempted(trainer) -> bool:
    """Whether training stopped for a pre-emption (no final checkpoint or export: the requeued job does them)."""
    return preemption_of(trainer) is not None


_EARLY_SIGNAL = {"received": False}


def catch_early_signal() -> None:
    """Record a SIGUSR1 that lands before :class:`Preemption` is set up (model building): the
    callback then stops at the first step boundary instead of Python dying from the signal."""
    if not hasattr(signal, "SIGUSR1"):
        return

    def handler(signum, _frame) -> None:
        _EARLY_SIGNAL["received"] = True
        log.warning("signal %d before training started: pre-empting at the first step boundary", signum)

    try:
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, handler)
    except ValueError:  # not the main thread
        pass


class Preemption(Callback):
    """Save together at a step boundary on SIGUSR1, then requeue (see the module docstring).

    Installed in ``setup``, before Lightning registers its own SIGUSR1 handler (which would save
    inside the handler): Lightning keeps an existing handler.
    """

    NAME = "preempt"

    def __init__(self, dirpath: str, requeue: bool = True, signum: int | None = None) -> None:
        self.dirpath = Path(dirpath)
        self.requeue = requeue
        self.signum = signum if signum is not None else getattr(signal, "SIGUSR1", None)
        self.requested = False
        self.saved: Path | None = None
        self._previous = None

    def _handler(self, signum, _frame) -> None:
        self.requested = True  # nothing else: the step in progress finishes first

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.signum is None:
            return
        try:
            self._previous = signal.signal(self.signum, self._handler)
        except ValueError:  # not the main thread: no signal handling
            self.signum = None
        if _EARLY_SIGNAL["received"] and self.signum == getattr(signal, "SIGUSR1", None):
            self.requested, _EARLY_SIGNAL["received"] = True, False

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.signum is not None and self._previous is not None:
            try:
                signal.signal(self.signum, self._previous)
            except ValueError:
                pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank, every step: one boolean all-reduce (any rank signalled -> all stop here)
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = self.dirpath / f"{self.NAME}.ckpt"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            marker_of(path).unlink(missing_ok=True)
        trainer.strategy.barrier("Preemption.begin")
        trainer.save_checkpoint(path)  # a collective: all ranks, same point
        trainer.strategy.barrier("Preemption.saved")
        if trainer.is_global_zero:
            write_marker(path, trainer.global_step)
            log.warning("pre-emption signal: saved %s at step %d", path, trainer.global_step)
        self.saved = path
        trainer.should_stop = True

    def requeue_job(self) -> str | None:
        """``scontrol requeue`` this SLURM job (or array task); call on rank 0, after the loggers are
        closed (SLURM kills the job as it requeues it). Returns the job id requeued, or None."""
        array = os.environ.get("SLURM_ARRAY_JOB_ID")
        job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID")
        if not (self.requeue and job):
            return None
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        log.warning("scontrol requeue %s: %s", job, "ok" if result.returncode == 0 else result.stderr.strip())
        return job
