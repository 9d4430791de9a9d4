"""The LightningDataModule that serves RL prompts and holds the online rollout buffer."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from metis.data.rollout_buffer import RolloutBuffer
from metis.data.sampler import ResumableSampler
from metis.core.task import Task


def rank_share(prompts_per_step: int, world_size: int) -> int:
    """Prompts each rank takes per RL step; the global count must split evenly."""
    if prompts_per_step % world_size:
        raise ValueError(f"data.prompts_per_step={prompts_per_step} is the whole job's prompts per RL step and must "
                         f"be divisible by the number of ranks ({world_size} = trainer.devices x trainer.num_nodes)")
    return prompts_per_step // world_size


class TaskDataset(Dataset):
    def __init__(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            raise ValueError("the prompt set is empty")
        self.tasks = tasks if isinstance(tasks, Sequence) else list(tasks)  # lazy splits stay lazy

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]


def _as_list(batch: list[Task]) -> list[Task]:
    return batch


class PromptDataModule(L.LightningDataModule):
    """Serves batches of :class:`Task` and owns the buffer.

    ``prompts_per_step`` is the whole job's: each of the ``world_size`` ranks gets
    ``prompts_per_step / world_size`` prompts per RL step (:attr:`prompts_per_rank`); the sampler
    shards one global stream, so the job sees the same prompts on any number of ranks.

    ``source`` is a callable returning ``{"train": [...], "val": [...]}`` (Hydra builds it with
    ``_partial_``), so synthetic, converted and curated prompt sets plug in the same way.
    ``processor`` is accepted for a uniform DataModule signature; prompts are encoded by the agent.
    """

    def __init__(self, source: Callable[[], dict[str, list[Task]]], prompts_per_step: int = 2,
                 val_prompts: int | None = None, seed: int = 0, num_workers: int = 0, processor=None) -> None:
        super().__init__()
        if prompts_per_step < 1:
            raise ValueError(f"data.prompts_per_step must be >= 1, got {prompts_per_step}")
        self.source, self.prompts_per_step, self.seed = source, prompts_per_step, seed
        self.val_prompts, self.num_workers = val_prompts, num_workers
        self.prompts_per_rank = prompts_per_step  # set for the world size in setup()
        self.splits: dict[str, list[Task]] = {}
        self.buffer = RolloutBuffer(seed)
        self.sampler: ResumableSampler | None = None
        self._pending_state: dict[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.source()
            if not self.splits.get("train"):
                raise ValueError("the prompt source returned no 'train' split")
            trainer = getattr(self, "trainer", None)
            rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
            self.prompts_per_rank = rank_share(self.prompts_per_step, world)
            self.sampler = ResumableSampler(len(self.splits["train"]), self.seed, rank, world)
            if self._pending_state is not None:
                self.sampler.load_state_dict(self._pending_state)

    def train_dataloader(self) -> DataLoader:
        # its own generator: creating the iterator must not draw from the global RNG (exact resume)
        return DataLoader(TaskDataset(self.splits["train"]), batch_size=self.prompts_per_rank, sampler=self.sampler,
                          collate_fn=_as_list, num_workers=self.num_workers, drop_last=True,
                          generator=torch.Generator().manual_seed(self.seed))

    def step_done(self, batch: list[Task]) -> None:
        """Called by the module when a training step has consumed ``batch``."""
        if self.sampler is not None:
            self.sampler.advance(len(batch) * self.sampler.world_size)

    def val_dataloader(self) -> DataLoader | list:
        val = self.splits.get("val") or []
        if self.val_prompts is not None:
            val = val[: self.val_prompts]
        if not val:
            return []
        return DataLoader(TaskDataset(val), batch_size=max(len(val), 1), collate_fn=_as_list)

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(),
                "sampler": self.sampler.state_dict() if self.sampler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        if state.get("sampler") is not None:
            if self.sampler is not None:
                self.sampler.load_state_dict(state["sampler"])
            else:
                self._pending_state = state["sampler"]
