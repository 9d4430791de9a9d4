"""Callbacks that make an RL run's curves readable: the RL-step axis in W&B and a step-0 validation.

Both act only on an RL module (one with ``rl_step``); on SFT they do nothing.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import Callback

from metis.utils.metrics import window_mean

log = logging.getLogger(__name__)

STEP_METRIC = "train/rl_step"
VAL_STEP_METRIC = "val/rl_step"   # the RL step a validation ran after (0: before training)
STEP_OF = {"train/": STEP_METRIC, "val/": VAL_STEP_METRIC}


def _wandb_runs(trainer) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


class RLStepAxis(Callback):
    """Define every ``train/*`` metric against ``train/rl_step`` and every ``val/*`` metric against
    ``val/rl_step`` in W&B, and log ``val/rl_step`` with each validation.

    Lightning's WandbLogger plots against ``trainer/global_step``, an optimizer step (several per
    RL step with PPO mini-batches or epochs). The globs are defined at the start and each metric
    again by its exact name once it appears (an exact definition wins over the logger's own
    ``*`` glob). Validation rows carry their own ``val/rl_step`` rather than a synced
    ``train/rl_step``: readers take the rows holding ``train/rl_step`` for the training rows."""

    def __init__(self) -> None:
        self._defined: set[str] = set()

    def _define(self, trainer, keys) -> None:
        if trainer.global_rank != 0:
            return
        new = [k for k in keys if k not in self._defined and k not in STEP_OF.values()]
        if not new:
            return
        for run in _wandb_runs(trainer):
            for step in STEP_OF.values():
                if step not in self._defined:
                    run.define_metric(step)
            for key in new:
                run.define_metric(key, step_metric=STEP_OF[key[:key.index("/") + 1]])
        self._defined.update(new)
        self._defined.update(STEP_OF.values())

    def on_train_start(self, trainer, pl_module) -> None:
        if hasattr(pl_module, "rl_step"):
            self._define(trainer, ("train/*", "val/*"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if hasattr(pl_module, "rl_step"):
            self._define(trainer, [k for k in trainer.callback_metrics if k.startswith(("train/", "val/"))])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if hasattr(pl_module, "rl_step") and not trainer.sanity_checking:
            pl_module.log(VAL_STEP_METRIC, float(pl_module.rl_step), batch_size=1)

    def on_validation_end(self, trainer, pl_module) -> None:
        if hasattr(pl_module, "rl_step") and not trainer.sanity_checking:
            self._define(trainer, [k for k in trainer.callback_metrics if k.startswith("val/")])


# rollout_metrics' keys; the last four exist only where some task needs (or needs no) tool
VAL_KEYS = ("accuracy", "format_rate", "tool_call_rate", "mean_tool_calls", "tool_error_rate", "truncated_rate",
            "answered_rate", "mean_turns", "response_length", "accuracy_tool_needed", "accuracy_tool_unneeded",
            "necessary_tool_rate", "unnecessary_tool_rate")


def pooled_sums(per_batch: list[tuple[dict[str, float], int]], keys=VAL_KEYS) -> torch.Tensor:
    """``[2, len(keys)]``: rollout-weighted sums and weights of per-batch metrics, over the batches
    that logged each key (what Lightning's epoch-end mean of ``validation_step``'s ``log_dict``
    gives). Sums add across ranks; a fixed key list keeps every rank's tensor the same shape."""
    out = torch.zeros(2, len(keys), dtype=torch.float64)
    for metrics, n in per_batch:
        for j, k in enumerate(keys):
            if k in metrics:
                out[0, j] += float(metrics[k]) * n
                out[1, j] += n
    return out


def pooled_means(sums: torch.Tensor, keys=VAL_KEYS) -> dict[str, float]:
    return {k: float(sums[0, j] / sums[1, j]) for j, k in enumerate(keys) if sums[1, j] > 0}


class ValidateAtStart(Callback):
    """Validate the initial policy once before the first RL step, as ``val/*`` at RL step 0.

    Gives the summary its ``before -> after`` and every curve its starting point. Runs on a fresh
    run (not on resume) when the trainer validates every N steps (an integer
    ``trainer.val_check_interval``);
    greedy decoding draws no random numbers, so the run's sampling is unchanged."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.before: dict[str, float] = {}

    @torch.no_grad()
    def on_train_start(self, trainer, pl_module) -> None:
        if not (self.enabled and hasattr(pl_module, "agent") and hasattr(pl_module, "rl_step")):
            return
        # an RL epoch is endless: the run validates only every N steps (an int; null becomes 1.0,
        # "once per epoch", i.e. never)
        if pl_module.rl_step > 0 or not isinstance(trainer.val_check_interval, int) or trainer.limit_val_batches == 0:
            return
        from metis.agent.metrics import rollout_metrics
        from metis.modules.sharding import gathered

        loader = trainer.datamodule.val_dataloader()
        per_batch = []
        for batch in loader:
            with gathered(pl_module.model):
                trajs = pl_module.agent.run(batch, n=pl_module.val_group_size, greedy=True)
            if trajs:
                per_batch.append((rollout_metrics(trajs, pl_module.score(trajs), None), len(trajs)))
        sums = pooled_sums(per_batch)
        if trainer.world_size > 1:  # every rank holds its shard of the prompts
            sums = trainer.strategy.reduce(sums.to(pl_module.device), reduce_op="sum").cpu()
        metrics = pooled_means(sums)
        self.before = {f"val/{k}": v for k, v in metrics.items()}
        if trainer.global_rank == 0 and self.before:
            for lg in trainer.loggers:
                lg.log_metrics({**self.before, VAL_STEP_METRIC: 0.0}, step=trainer.global_step)
            log.info("validation before RL step 1: accuracy %.3f, tool-call rate %.3f",
                     self.before.get("val/accuracy", float("nan")),
                     self.before.get("val/tool_call_rate", float("nan")))


class SampledTrend(Callback):
    """The sampled training rollouts' rates over the first and the last ``window`` RL steps, for the
    summary's ``first -> last`` lines: greedy validation on a few prompts moves in steps of 1/n and
    late, the sampled rates show where the policy is heading. Rank 0 reads what the step logged."""

    KEYS = ("train/accuracy", "train/accuracy_tool_needed", "train/unnecessary_tool_rate",
            "train/necessary_tool_rate", "train/tool_call_rate")

    def __init__(self, window: int = 8) -> None:
        self.window = int(window)
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if hasattr(pl_module, "rl_step"):
            m = trainer.callback_metrics
            self.steps.append({k: float(m[k]) for k in self.KEYS if k in m})

    def trend(self) -> tuple[str, dict[str, float], dict[str, float]] | None:
        """(label, mean over the first window, mean over the last window); None when too short."""
        w = min(self.window, len(self.steps) // 2)
        if w < 1:
            return None
        n = len(self.steps)
        return f"RL steps 1-{w} -> {n - w + 1}-{n}", window_mean(self.steps[:w]), window_mean(self.steps[-w:])
