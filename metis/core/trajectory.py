"""A rollout as tokens: what the engine extends and what the trainer scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from metis.core.task import Task


@dataclass
class EncodedImages:
    """Processor output for some images: patches and their (t, h, w) grids, in order."""

    pixel_values: torch.Tensor  # [sum of t*h*w, patch_dim]
    grid_thw: torch.Tensor  # [num_images, 3]

    @staticmethod
    def empty(patch_dim: int = 0) -> "EncodedImages":
        return EncodedImages(torch.zeros(0, patch_dim), torch.zeros(0, 3, dtype=torch.long))

    def extend(self, other: "EncodedImages") -> "EncodedImages":
        if other.grid_thw.numel() == 0:
            return self
        if self.grid_thw.numel() == 0:
            return other
        return EncodedImages(torch.cat([self.pixel_values, other.pixel_values]),
                             torch.cat([self.grid_thw, other.grid_thw]))


@dataclass
class Trajectory:
    """One rollout, token-in token-out.

    ``response_ids`` holds everything after the prompt: the model's tokens and the forced
    observation tokens; ``response_mask`` is 1 on the model's tokens only.
    """

    task: Task
    traj_id: str
    group_id: int
    prompt_ids: list[int]
    images: list[Image.Image]
    encoded: EncodedImages
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    turn_texts: list[str] = field(default_factory=list)  # the model's own text, one entry per turn
    observations: list[dict[str, Any]] = field(default_factory=list)  # tool, arguments, text, error
    num_tool_calls: int = 0
    tool_errors: int = 0
    num_turns: int = 0
    truncated: bool = False
    done: bool = False
    final_answer: str | None = None
    engine_logprobs: list[float] = field(default_factory=list)  # per model token, when the engine reports them

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def response_text(self) -> str:
        return "".join(self.turn_texts)

    def add_model_tokens(self, ids: list[int], text: str) -> None:
        self.response_ids.extend(ids)
        self.response_mask.extend([1] * len(ids))
        self.turn_texts.append(text)
        self.num_turns += 1

    def add_forced_tokens(self, ids: list[int], images: list[Image.Image], encoded: EncodedImages) -> None:
        self.response_ids.extend(ids)
        self.response_mask.extend([0] * len(ids))
        self.images.extend(images)
        self.encoded = self.encoded.extend(encoded)

    def summary(self) -> dict[str, Any]:
        """A JSON-able record for logs and analysis (no tensors, no pixels)."""
        return {
            "traj_id": self.traj_id, "task_id": self.task.id, "group_id": self.group_id,
            "question": self.task.question, "ground_truth": self.task.answer,
            "needs_tool": self.task.needs_tool, "response": self.response_text,
            "observations": self.observations, "final_answer": self.final_answer,
            "num_tool_calls": self.num_tool_calls, "tool_errors": self.tool_errors,
            "num_turns": self.num_turns, "truncated": self.truncated,
            "response_tokens": len(self.response_ids), "model_tokens": sum(self.response_mask),
        }
