"""The online rollout buffer: this step's trajectories with their scores and old log-probs."""

from __future__ import annotations

import random
from typing import Any, Iterator

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

    def minibatches(self, size: int, shuffle: bool = True) -> Iterator[list[int]]:
        order = list(range(len(self)))
        if shuffle:
            self._rng.shuffle(order)
        for start in range(0, len(order), size):
            yield order[start:start + size]

    def clear(self) -> None:
        self.trajectories, self.data = [], {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.setstate(state["rng"])
