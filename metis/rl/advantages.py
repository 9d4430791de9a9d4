"""Group-relative advantages (GRPO, HDPO) and the reward schemes (the ``REWARD_SCHEMES`` registry).

Formulas: docs/paper.md, "HDPO" and "The coupled baseline"; one section per scheme in
docs/reward_schemes.md.

Deliberate simplifications:
- rewards are computed (and logged) in float64, advantages returned as float32; the std is
  the unbiased one (divisor n - 1), and a group (or eligible subset) of one rollout gets advantage 0;
- `correct` is `r_ans > 0`, so a partial-credit r_ans counts as correct for the tool channel;
- the std in the `adv/<channel>/std` metric is the population std (no n - 1) so that it is
  defined for a single rollout;
- "efficiency-active group": a group in which at least one rollout has a non-zero efficiency
  advantage (|Q| >= 2 but all T equal is not active).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from metis.rl.params import NonNegative, Positive, TypedFunction
from metis.rl.rewards import TOOL_REWARD_SHAPES, accuracy_reward, tool_reward
from metis.rl.types import AdvantageChannel, AdvantageResult, RolloutScores
from metis.utils.registry import Registry

# name -> fn(scores, *, typed keyword parameters) -> AdvantageResult. ``@REWARD_SCHEMES.register(name)``
# reads the parameters' types, defaults and bounds from the signature (metis.rl.params), so
# ``REWARD_SCHEMES.get(name)(scores, **params)`` and ``RewardScheme(name, **params)`` check them.
REWARD_SCHEMES: Registry[TypedFunction] = Registry(
    "reward scheme", prepare=lambda name, fn: TypedFunction(fn, f"reward scheme {name!r}"))

ELIGIBLE = ("correct", "correct_and_used_tools")
Eligible = Literal[ELIGIBLE]  # type: ignore[valid-type]
ToolRewardShape = Literal[TOOL_REWARD_SHAPES]  # type: ignore[valid-type]


# ----------------------------------------------------------------------------- group statistics
def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    _, inv = torch.unique(group_ids, return_inverse=True)
    return inv, int(inv.max().item()) + 1 if inv.numel() else 0


def _masked_group_normalize(
    rewards: Tensor, group_ids: Tensor, member: Tensor | None, eps: float, normalize_std: bool
) -> Tensor:
    """(r - mean_S) / (std_S + eps) for rollouts in S = group ∩ member, 0 elsewhere.

    Groups whose member subset has <= 1 rollout get 0 everywhere. Vectorised with index_add_.
    """
    r = rewards.detach().to(torch.float64).reshape(-1)
    n = r.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=rewards.device)
    if group_ids.numel() != n:
        raise ValueError(f"rewards has {n} entries but group_ids has {group_ids.numel()}")
    m = torch.ones(n, dtype=torch.bool, device=r.device) if member is None else member.reshape(-1).bool()
    inv, k = _group_index(group_ids.reshape(-1).to(r.device))
    mf = m.to(torch.float64)
    counts = torch.zeros(k, dtype=torch.float64, device=r.device).index_add_(0, inv, mf)
    sums = torch.zeros(k, dtype=torch.float64, device=r.device).index_add_(0, inv, r * mf)
    mean = sums / counts.clamp(min=1.0)
    dev = (r - mean[inv]) * mf
    if normalize_std:
        sq = torch.zeros(k, dtype=torch.float64, device=r.device).index_add_(0, inv, dev * dev)
        std = torch.sqrt(sq / (counts - 1.0).clamp(min=1.0))
        dev = dev / (std[inv] + eps)
    active = (counts >= 2.0)[inv] & m
    return torch.where(active, dev, torch.zeros_like(dev)).to(torch.float32)


def grpo_advantages(
    rewards: Tensor, group_ids: Tensor, eps: float = 1e-6, normalize_std: bool = True
) -> Tensor:
    """A_i = (r_i - mean_g) / (std_g + eps) over the rollouts of i's group (unbiased std).

    normalize_std=False gives r_i - mean_g (Dr. GRPO). Groups of one rollout get 0. Group ids may
    be interleaved and non-contiguous.
    """
    return _masked_group_normalize(rewards, group_ids, None, eps, normalize_std)


def hdpo_advantages(
    acc_rewards: Tensor,
    tool_rewards: Tensor,
    correct: Tensor,
    group_ids: Tensor,
    eps: float = 1e-6,
    normalize_std: bool = True,
) -> tuple[Tensor, Tensor]:
    """(A_acc, A_tool) of docs/paper.md, "HDPO".

    A_acc: GRPO over every rollout of the group. A_tool: GRPO over Q = {i in group : correct_i}
    only; 0 outside Q; 0 for the whole group when |Q| <= 1. `correct` is the eligibility mask
    (pass `correct & used_tools` for the stricter variant).
    """
    acc = grpo_advantages(acc_rewards, group_ids, eps, normalize_std)
    tool = _masked_group_normalize(tool_rewards, group_ids, correct.bool(), eps, normalize_std)
    return acc, tool


def _frac_groups(values: Tensor, group_ids: Tensor, pred: str) -> float:
    """Fraction of groups whose `values` have zero spread ("zero_std") or any non-zero ("any")."""
    if values.numel() == 0:
        return 0.0
    inv, k = _group_index(group_ids.to(values.device))
    v = values.to(torch.float64)
    if pred == "zero_std":
        hi = torch.full((k,), -math.inf, dtype=torch.float64, device=v.device).scatter_reduce(0, inv, v, "amax")
        lo = torch.full((k,), math.inf, dtype=torch.float64, device=v.device).scatter_reduce(0, inv, v, "amin")
        return float((hi == lo).double().mean())
    hit = torch.zeros(k, dtype=torch.float64, device=v.device).index_add_(0, inv, (v != 0).double())
    return float((hit > 0).double().mean())


# ----------------------------------------------------------------------------- result assembly
def _result(
    scores: RolloutScores,
    channels: list[AdvantageChannel],
    rewards: dict[str, Tensor],
    main_reward: Tensor,
    efficiency_adv: Tensor | None,
) -> AdvantageResult:
    g = scores.group_ids
    n = len(scores)
    metrics: dict[str, float] = {
        "rho_Q": float((efficiency_adv != 0).double().mean()) if efficiency_adv is not None and n else 0.0,
        "frac_reward_zero_std": _frac_groups(main_reward, g, "zero_std"),
        "efficiency_active_groups": _frac_groups(efficiency_adv, g, "any") if efficiency_adv is not None else 0.0,
        "num_groups": float(_group_index(g)[1]),
        "frac_correct": float((scores.r_ans > 0).double().mean()) if n else 0.0,
        "mean_tool_calls": float(scores.num_tool_calls.double().mean()) if n else 0.0,
    }
    for c in channels:
        a = c.advantages.double()
        for stat, val in (
            ("mean", a.mean() if n else 0.0),
            ("std", a.std(correction=0) if n else 0.0),
            ("min", a.min() if n else 0.0),
            ("max", a.max() if n else 0.0),
        ):
            metrics[f"adv/{c.name}/{stat}"] = float(val)
    for k, v in rewards.items():
        metrics[f"reward/{k}/mean"] = float(v.double().mean()) if n else 0.0
    return AdvantageResult(channels=channels, rewards=rewards, metrics=metrics)


def _base_rewards(scores: RolloutScores, ans_weight: float, fmt_weight: float) -> dict[str, Tensor]:
    correct = scores.r_ans > 0
    r_ans, r_fmt = scores.r_ans.double(), scores.r_fmt.double()
    return {
        "r_ans": r_ans,
        "r_fmt": r_fmt,
        "r_acc": accuracy_reward(r_ans, r_fmt, ans_weight, fmt_weight),
        # The paper's r_tool (docs/paper.md), logged by every scheme; schemes with a configurable one overwrite it.
        "r_tool": tool_reward(scores.num_tool_calls, correct, "inverse"),
    }


def _tool_gate(scores: RolloutScores, condition_on_correct: bool) -> Tensor:
    """Which rollouts may receive a tool reward: the correct ones, or all of them."""
    if condition_on_correct:
        return scores.r_ans > 0
    return torch.ones(len(scores), dtype=torch.bool, device=scores.r_ans.device)


# ----------------------------------------------------------------------------- schemes
# Every scheme shares ans_weight / fmt_weight (r_acc = 0.9 r_ans + 0.1 r_fmt), normalize_std (False:
# Dr. GRPO, no division by the std) and eps (added to the std).
@REWARD_SCHEMES.register("hdpo")
def hdpo(scores: RolloutScores, *, w_acc: NonNegative = 1.0, w_tool: NonNegative = 0.15,
         eligible: Eligible = "correct", tool_reward_shape: ToolRewardShape = "inverse", beta: NonNegative = 0.5,
         tool_term_nonzero_only: bool = True, ans_weight: NonNegative = 0.9, fmt_weight: NonNegative = 0.1,
         normalize_std: bool = True, eps: Positive = 1e-6) -> AdvantageResult:
    """Two channels: accuracy GRPO over the group, tool GRPO over the eligible correct subset Q.

    eligible="correct" (default; what the paper's code does): Q = every correct rollout, tool
    users or not, so a correct no-tool rollout (r_tool = 1) gets the largest efficiency
    advantage. eligible="correct_and_used_tools" (what the paper's code comment says): Q =
    correct rollouts with T > 0; correct no-tool rollouts are outside Q and get no efficiency
    advantage, so the channel only ranks tool users against each other.

    tool_term_nonzero_only=True (the paper, docs/paper.md): the tool loss is averaged over the tokens of
    rollouts with A_tool != 0 only, which scales its weight by about 1/rho_Q; False averages it
    over all rollouts like the accuracy term (the scheme simulator's ablation, see
    experiments/simulator/README.md).
    """
    rewards = _base_rewards(scores, ans_weight, fmt_weight)
    correct = scores.r_ans > 0
    rewards["r_tool"] = tool_reward(scores.num_tool_calls, correct, tool_reward_shape, beta)
    q = correct if eligible == "correct" else correct & (scores.num_tool_calls > 0)
    acc, tool = hdpo_advantages(rewards["r_acc"], rewards["r_tool"], q, scores.group_ids, eps, normalize_std)
    channels = [
        AdvantageChannel("acc", acc, w_acc),
        AdvantageChannel("tool", tool, w_tool, nonzero_only=tool_term_nonzero_only),
    ]
    return _result(scores, channels, rewards, rewards["r_acc"], tool)


@REWARD_SCHEMES.register("grpo")
def grpo(scores: RolloutScores, *, ans_weight: NonNegative = 0.9, fmt_weight: NonNegative = 0.1,
         normalize_std: bool = True, eps: Positive = 1e-6) -> AdvantageResult:
    """Accuracy-only GRPO (the paper's w_tool = 0 baseline)."""
    rewards = _base_rewards(scores, ans_weight, fmt_weight)
    acc = grpo_advantages(rewards["r_acc"], scores.group_ids, eps, normalize_std)
    return _result(scores, [AdvantageChannel("acc", acc, 1.0)], rewards, rewards["r_acc"], None)


@REWARD_SCHEMES.register("coupled")
def coupled(scores: RolloutScores, *, alpha: NonNegative = 0.15, tool_reward_shape: ToolRewardShape = "inverse",
            beta: NonNegative = 0.5, condition_tool_on_correct: bool = True, ans_weight: NonNegative = 0.9,
            fmt_weight: NonNegative = 0.1, normalize_std: bool = True, eps: Positive = 1e-6) -> AdvantageResult:
    """r = r_acc + alpha * r_tool, normalised once per group (the baseline HDPO argues against)."""
    rewards = _base_rewards(scores, ans_weight, fmt_weight)
    gate = _tool_gate(scores, condition_tool_on_correct)
    rewards["r_tool"] = tool_reward(scores.num_tool_calls, gate, tool_reward_shape, beta)
    rewards["reward"] = rewards["r_acc"] + alpha * rewards["r_tool"]
    adv = grpo_advantages(rewards["reward"], scores.group_ids, eps, normalize_std)
    return _result(scores, [AdvantageChannel("coupled", adv, 1.0)], rewards, rewards["reward"], None)


@REWARD_SCHEMES.register("coupled_penalty")
def coupled_penalty(scores: RolloutScores, *, lam: NonNegative = 0.05, ans_weight: NonNegative = 0.9,
                    fmt_weight: NonNegative = 0.1, normalize_std: bool = True, eps: Positive = 1e-6) -> AdvantageResult:
    """r = r_acc - lam * T for every rollout (right or wrong), normalised once per group."""
    rewards = _base_rewards(scores, ans_weight, fmt_weight)
    rewards["reward"] = rewards["r_acc"] - lam * scores.num_tool_calls.double()
    adv = grpo_advantages(rewards["reward"], scores.group_ids, eps, normalize_std)
    return _result(scores, [AdvantageChannel("coupled", adv, 1.0)], rewards, rewards["reward"], None)


@REWARD_SCHEMES.register("tool_bonus")
def tool_bonus(scores: RolloutScores, *, ans_weight: NonNegative = 0.8, fmt_weight: NonNegative = 0.2,
               bonus_weight: NonNegative = 1.2, normalize_std: bool = True, eps: Positive = 1e-6) -> AdvantageResult:
    """DeepEyes: r = 0.8 r_ans + 0.2 r_fmt + 1.2 * 1[T > 0] * 1[correct], normalised per group."""
    rewards = _base_rewards(scores, ans_weight, fmt_weight)
    used = ((scores.num_tool_calls > 0) & (scores.r_ans > 0)).double()
    rewards["reward"] = rewards["r_acc"] + bonus_weight * used
    adv = grpo_advantages(rewards["reward"], scores.group_ids, eps, normalize_std)
    return _result(scores, [AdvantageChannel("tool_bonus", adv, 1.0)], rewards, rewards["reward"], None)


@REWARD_SCHEMES.register("normalize_then_sum")
def normalize_then_sum(scores: RolloutScores, *, w_acc: NonNegative = 1.0, w_tool: NonNegative = 0.15,
                       tool_reward_shape: ToolRewardShape = "inverse", beta: NonNegative = 0.5,
                       condition_tool_on_correct: bool = False, ans_weight: NonNegative = 0.9,
                       fmt_weight: NonNegative = 0.1, normalize_std: bool = True, eps: Positive = 1e-6) -> AdvantageResult:
    """A = w_acc * GRPO(r_acc) + w_tool * GRPO(r_tool), both over ALL rollouts (TRL GDPO idea).

    By default r_tool = shape(T) for every rollout, right or wrong (condition_tool_on_correct
    False), so a wrong no-tool rollout does get a positive efficiency advantage.
    """
    rewards = _base_rewards(scores, ans_weight, fmt_weight)
    gate = _tool_gate(scores, condition_tool_on_correct)
    rewards["r_tool"] = tool_reward(scores.num_tool_calls, gate, tool_reward_shape, beta)
    acc = grpo_advantages(rewards["r_acc"], scores.group_ids, eps, normalize_std)
    tool = grpo_advantages(rewards["r_tool"], scores.group_ids, eps, normalize_std)
    adv = w_acc * acc + w_tool * tool
    return _result(scores, [AdvantageChannel("sum", adv, 1.0)], rewards, rewards["r_acc"], tool)
