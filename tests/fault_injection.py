"""A Lightning callback that kills the training process in the middle of an RL step (tests only).

``+callbacks.kill._target_=fault_injection.KillMidStep +callbacks.kill.step=3`` (with ``tests/`` on
PYTHONPATH) sends SIGKILL to the run after step 3's rollouts and backward pass, just before its first
optimizer update: nothing of step 3 may survive in the checkpoint, and a resumed run must redo it.
"""

from __future__ import annotations

import os
import signal

import lightning as L


class KillMidStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = int(step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if pl_module.rl_step + 1 == self.step:  # rl_step counts the steps already finished
            os.kill(os.getpid(), signal.SIGKILL)
