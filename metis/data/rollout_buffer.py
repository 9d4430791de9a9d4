"""The online rollout buffer: this step's trajectories with their scores and old log-probs."""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import torch

from metis.core.trajectory import Trajectory


class RolloutBuffer:
    """Holds one RL step's rollouts and serves PPO mini-batches of row indices.

    Deliberate simplification: fully on-policy, so the buffer is cleared at every step; its
    ``state_dict`` carries only the sampling RNG (a checkpoint is taken between steps).
    """

    def __init__(self, seed: int = 0) -> None:
        self.trajectories: list[Trajectory] = []
        self.data: dict[str, torch.Tensor] = {}
        self._rng = random.Random(seed)

    def fill(self, trajectories: list[Trajectory], **tensors: torch.Tensor) -> None:
        for name, value in tensors.items():
            if value.shape[0] != len(trajectories):
                raise ValueError(f"buffer field {name} has {value.shape[0]} rows for {len(trajectories)} rollouts")
        self.trajectories, self.data = trajectories, dict(tensors)

    def __len__(self) -> int:
        return len(self.trajectories)

    def minibatches(self, prompt_of: Sequence[int], num_prompts: int, prompts_per_minibatch: int,
                    shuffle: bool = True) -> Iterator[list[int]]:
        """Row indices of each PPO mini-batch, made of whole prompts (all their rollouts).

        ``prompt_of[row]`` is the row's prompt index in this rank's batch (``0..num_prompts-1``).
        There are always ``ceil(num_prompts / prompts_per_minibatch)`` mini-batches, whatever the
        rollouts: a prompt without rollouts (skipped, or its rollouts dropped) leaves its
        mini-batch smaller, possibly empty, so every rank runs the same number of updates. Rows
        of one prompt stay adjacent (they can share the prompt's forward).
        """
        if prompts_per_minibatch < 1:
            raise ValueError(f"prompts_per_minibatch must be >= 1, got {prompts_per_minibatch}")
        rows_of: dict[int, list[int]] = {}
        for row, k in enumerate(prompt_of):
            if not 0 <= k < num_prompts:
                raise ValueError(f"row {row}: prompt index {k} outside 0..{num_prompts - 1}")
            rows_of.setdefault(k, []).append(row)
        order = list(range(num_prompts))
        if shuffle:
            self._rng.shuffle(order)
        for start in range(0, num_prompts, prompts_per_minibatch):
            yield [row for k in order[start:start + prompts_per_minibatch] for row in rows_of.get(k, [])]

    def clear(self) -> None:
        self.trajectories, self.data = [], {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.setstate(state["rng"])
