"""An endless, resumable prompt sampler: seeded permutations back to back, position in the state."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Yields indices of seeded permutations, one after another, forever.

    ``consumed`` counts indices of the global stream (all ranks) handed to training (advanced by the trainer through
    :meth:`advance`, not by iteration: Lightning fetches one batch ahead); a new iterator starts
    at ``consumed``. So a resumed run continues with exactly the prompts an uninterrupted run
    would have seen next, never replays one, and has no epoch boundary to stop at by accident.
    """

    def __init__(self, size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if size < 1:
            raise ValueError("cannot sample from an empty prompt set")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.size, self.seed, self.consumed = size, seed, 0
        self.rank, self.world_size = rank, world_size

    def _permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=gen).tolist()

    def __iter__(self) -> Iterator[int]:
        """This rank's share of the global stream: positions ``p`` with ``p % world_size == rank``."""
        position = self.consumed
        while True:
            epoch, offset = divmod(position, self.size)
            for index in self._permutation(epoch)[offset:]:
                if position % self.world_size == self.rank:
                    yield index
                position += 1

    def __len__(self) -> int:  # Lightning only needs a number; the stream is endless
        return 2**31 - 1

    def advance(self, n: int) -> None:
        self.consumed += n

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "seed": self.seed, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError(f"checkpoint's prompt set (size {state['size']}, seed {state['seed']}) differs from "
                             f"this run's (size {self.size}, seed {self.seed}): data position cannot be restored")
        self.consumed = int(state["consumed"])
