"""A progress bar that counts what the run is made of: RL steps of an RL run, optimizer steps of SFT.

Lightning's bar counts the batches of an epoch. The RL prompt stream is endless (its length is a
placeholder), so the stock bar read ``4/1073741823`` with an ETA of centuries; SFT's bar restarted
every epoch. This bar runs once from the restored step (a resumed run starts where it stood) to the
end of ``trainer.max_steps``, converted to RL steps for an RL module (``max_steps`` counts optimizer
steps, and one RL step makes ``ppo_epochs x mini-batches`` of them).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


def optimizer_steps_per_rl_step(ppo_epochs: int, rollouts: int, minibatch_size: int | None) -> int:
    """Optimizer steps one RL step makes: one per PPO epoch and mini-batch of ``rollouts``."""
    per_epoch = math.ceil(rollouts / minibatch_size) if minibatch_size else 1
    return max(1, ppo_epochs * max(per_epoch, 1))


def total_rl_steps(max_steps: int, per_rl_step: float) -> int:
    """RL steps a run of ``max_steps`` optimizer steps makes (the last one may overshoot)."""
    return max(1, math.ceil(max_steps / max(per_rl_step, 1e-9)))


class StepProgressBar(TQDMProgressBar):
    """``RL step 7/24 [00:45<01:50, 6.50s/it, accuracy=..., tool_rate=...]``."""

    # the stock format always shows it/s (0.15it/s for a 6.5 s RL step); rate_fmt flips to s/it
    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def _counts(self, trainer, module) -> tuple[int, int | None, str]:
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if not hasattr(module, "rl_step"):
            return trainer.global_step, max_steps, "step"
        done = int(module.rl_step)
        if done and trainer.global_step:  # measured: skipped prompts can shrink a step's mini-batches
            per = trainer.global_step / done
        else:
            rollouts = getattr(trainer.datamodule, "prompts_per_step", 1) * getattr(module, "group_size", 1)
            per = optimizer_steps_per_rl_step(getattr(module, "ppo_epochs", 1), rollouts,
                                              getattr(module, "minibatch_size", None))
        return done, (total_rl_steps(max_steps, per) if max_steps else None), "RL step"

    def on_train_start(self, trainer, pl_module) -> None:
        done, total, label = self._counts(trainer, pl_module)
        # starts at the restored step: the ETA measures this run's own rate (smoothing=0: the mean)
        self.train_progress_bar = Tqdm(desc=label, total=total, initial=done, position=2 * self.process_position,
                                       disable=self.is_disabled, leave=True, dynamic_ncols=True,
                                       file=sys.stdout, smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer, *_: Any) -> None:
        """One bar for the whole run (the stock bar restarts every epoch)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None or bar.disable:
            return
        done, total, _ = self._counts(trainer, pl_module)
        if total is not None and total != bar.total:
            bar.total = total
        if self._should_update(done, bar.total):
            bar.n = done
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
