"""Pure reward, advantage and loss code (torch and the standard library; math_verify for verifiers).

Never imports models, agent, tools or Lightning. Every formula of docs/paper.md lives here once.
"""

from metis.rl.advantages import REWARD_SCHEMES, grpo_advantages, hdpo_advantages
from metis.rl.losses import AGGREGATIONS, POLICY_LOSSES, clipped_policy_loss, kl_k3, masked_aggregate
from metis.rl.params import NonNegative, Positive, Range
from metis.rl.rewards import TOOL_REWARD_SHAPES, accuracy_reward, extract_answer, format_reward, tool_reward
from metis.rl.scheme import PolicyLoss, RewardScheme
from metis.rl.types import AdvantageChannel, AdvantageResult, RolloutScores
from metis.rl.verifiers import VERIFIERS, extract_choices, normalize_text, parse_number

__all__ = [
    "REWARD_SCHEMES",
    "AGGREGATIONS",
    "AdvantageChannel",
    "AdvantageResult",
    "POLICY_LOSSES",
    "PolicyLoss",
    "RewardScheme",
    "RolloutScores",
    "TOOL_REWARD_SHAPES",
    "VERIFIERS",
    "accuracy_reward",
    "clipped_policy_loss",
    "extract_answer",
    "extract_choices",
    "format_reward",
    "grpo_advantages",
    "hdpo_advantages",
    "kl_k3",
    "masked_aggregate",
    "NonNegative",
    "Positive",
    "Range",
    "normalize_text",
    "parse_number",
    "tool_reward",
]
