"""Data passed between reward computation, advantage estimation and the policy loss.

Deliberate simplifications: the dataclasses hold flat 1-D tensors (one entry per rollout) and
validate shapes only at construction; they are not frozen, so code that mutates a tensor in
place after construction is not re-checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def _as_1d(name: str, value: object, dtype: torch.dtype) -> Tensor:
    t = value if isinstance(value, Tensor) else torch.as_tensor(value)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one entry per rollout), got shape {tuple(t.shape)}")
    if dtype.is_floating_point:
        return t if t.is_floating_point() else t.to(dtype)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError(f"{name} must hold integers, got {t.tolist()}")
        return t.to(dtype)
    if t.dtype == torch.bool:
        return t.to(dtype)
    return t if t.dtype == dtype else t.to(dtype)


@dataclass
class RolloutScores:
    """Per-rollout raw scores, one entry per rollout (all 1-D, equal length).

    r_ans: float in [0, 1] (answer correctness); r_fmt: float in {0, 1} (format);
    num_tool_calls: long, T_i (failed and refused calls count); group_ids: long, rollouts of one
    prompt share an id (ids need not be contiguous or sorted).
    Lists and other array-likes are converted to tensors.
    """

    r_ans: Tensor
    r_fmt: Tensor
    num_tool_calls: Tensor
    group_ids: Tensor

    def __post_init__(self) -> None:
        self.r_ans = _as_1d("r_ans", self.r_ans, torch.float32)
        self.r_fmt = _as_1d("r_fmt", self.r_fmt, torch.float32)
        self.num_tool_calls = _as_1d("num_tool_calls", self.num_tool_calls, torch.long)
        self.group_ids = _as_1d("group_ids", self.group_ids, torch.long)
        n = self.r_ans.numel()
        for name in ("r_fmt", "num_tool_calls", "group_ids"):
            if getattr(self, name).numel() != n:
                raise ValueError(
                    f"RolloutScores fields must have equal lengths: r_ans has {n}, "
                    f"{name} has {getattr(self, name).numel()}"
                )
        if n and (self.r_ans.min() < 0 or self.r_ans.max() > 1):
            raise ValueError("r_ans must lie in [0, 1]")
        if n and (self.r_fmt.min() < 0 or self.r_fmt.max() > 1):
            raise ValueError("r_fmt must lie in [0, 1]")
        if n and self.num_tool_calls.min() < 0:
            raise ValueError("num_tool_calls must be >= 0")

    def __len__(self) -> int:
        return self.r_ans.numel()


@dataclass
class AdvantageChannel:
    """One advantage signal with its own loss term.

    nonzero_only=True: the channel's loss is averaged only over tokens of rollouts whose
    advantage is != 0 (the HDPO tool term).
    """

    name: str
    advantages: Tensor
    weight: float
    nonzero_only: bool = False

    def __post_init__(self) -> None:
        self.advantages = _as_1d(f"advantages of channel {self.name!r}", self.advantages, torch.float32)
        if not self.advantages.is_floating_point():
            raise ValueError(f"advantages of channel {self.name!r} must be floating point")
        self.weight = float(self.weight)


@dataclass
class AdvantageResult:
    """What an advantage estimator returns: loss channels plus per-rollout rewards and metrics."""

    channels: list[AdvantageChannel]
    rewards: dict[str, Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("AdvantageResult needs at least one channel")
        n = self.channels[0].advantages.numel()
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"channel names must be unique, got {names}")
        for c in self.channels:
            if c.advantages.numel() != n:
                raise ValueError(
                    f"all channels must have the same length: {self.channels[0].name!r} has {n}, "
                    f"{c.name!r} has {c.advantages.numel()}"
                )
        for k, v in list(self.rewards.items()):
            v = _as_1d(f"reward {k!r}", v, torch.float32)
            if v.numel() != n:
                raise ValueError(f"reward {k!r} has {v.numel()} entries, channels have {n}")
            self.rewards[k] = v

    def __len__(self) -> int:
        return self.channels[0].advantages.numel()

    def channel(self, name: str) -> AdvantageChannel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(f"no channel {name!r}; channels: {[c.name for c in self.channels]}")
