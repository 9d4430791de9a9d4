"""What the training module holds: a `RewardScheme` (scores -> advantage channels) and a
`PolicyLoss` (advantage channels + log-probs -> one scalar loss). Both are built by Hydra
from conf/reward/*.yaml and conf/loss/*.yaml and validate every parameter at construction.

Deliberate simplifications:
- every channel goes through the same loss function with the same clip settings and the same
  importance ratio (docs/paper.md, "HDPO": the same ratio in both terms);
- the KL penalty and the entropy bonus are added once, aggregated over the plain response
  mask of the whole mini-batch (not per channel), with the objective's `agg`;
- a channel's loss is computed even when its weight is 0, so its metrics stay comparable.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor

from metis.rl.advantages import REWARD_SCHEMES
from metis.rl.losses import AGGREGATIONS, POLICY_LOSSES, kl_k3, masked_aggregate
from metis.rl.types import AdvantageResult, RolloutScores


class RewardScheme:
    """A reward scheme of ``REWARD_SCHEMES`` with checked parameters (docs/reward_schemes.md).

    >>> RewardScheme("hdpo", w_tool=0.1).describe()["w_tool"]
    0.1
    """

    def __init__(self, name: str, **params: Any) -> None:
        if name not in REWARD_SCHEMES:
            raise ValueError(
                f"unknown reward scheme {name!r} (key 'name'); known: {', '.join(REWARD_SCHEMES.names())}"
            )
        self.name = name
        self._fn = REWARD_SCHEMES.get(name)
        self.params: dict[str, Any] = self._fn.check(params)

    def compute(self, scores: RolloutScores) -> AdvantageResult:
        """Advantages, rewards and metrics for one batch of rollouts."""
        return self._fn.fn(scores, **self.params)  # checked once, at construction

    def describe(self) -> dict[str, Any]:
        """Name and every parameter (defaults included), for the run config / W&B."""
        return {"name": self.name, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"RewardScheme({self.name!r}, {args})"


def _nonneg(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"policy loss parameter {key!r} must be a finite number >= 0, got {value!r}")
    return float(value)


class PolicyLoss:
    """L = sum_c w_c * L_clip(A_c; M_c) [+ kl_coef * KL_k3(ref) - entropy_coef * H].

    M_c is the response mask, times 1[A_c != 0] per row for `nonzero_only` channels (the HDPO
    tool term is averaged only over tokens of rollouts whose A_tool != 0).
    Extra keyword arguments are passed to the registered loss function and must be accepted by it.
    """

    def __init__(
        self,
        loss: str = "ppo",
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        dual_clip: float | None = 3.0,
        agg: str = "token-mean",
        kl_coef: float = 0.0,
        entropy_coef: float = 0.0,
        norm_len: int | None = None,
        **loss_params: Any,
    ) -> None:
        if loss not in POLICY_LOSSES:
            raise ValueError(f"unknown policy loss {loss!r} (key 'loss'); known: {', '.join(POLICY_LOSSES.names())}")
        clip_low = _nonneg("clip_low", clip_low)
        if clip_low >= 1:
            raise ValueError(f"policy loss parameter 'clip_low' must be < 1, got {clip_low!r}")
        clip_high = _nonneg("clip_high", clip_high)
        if dual_clip is not None:
            dual_clip = _nonneg("dual_clip", dual_clip)
            if dual_clip <= 1:
                raise ValueError(f"policy loss parameter 'dual_clip' must be > 1 or null, got {dual_clip!r}")
        if agg not in AGGREGATIONS:
            raise ValueError(f"policy loss parameter 'agg' must be one of {AGGREGATIONS}, got {agg!r}")
        if norm_len is not None and (isinstance(norm_len, bool) or not isinstance(norm_len, int) or norm_len <= 0):
            raise ValueError(f"policy loss parameter 'norm_len' must be a positive int or null, got {norm_len!r}")
        self.loss = loss
        self.kl_coef = _nonneg("kl_coef", kl_coef)
        self.entropy_coef = _nonneg("entropy_coef", entropy_coef)
        self._fn = POLICY_LOSSES.get(loss)
        self.loss_kwargs: dict[str, Any] = dict(
            clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip, agg=agg, norm_len=norm_len, **loss_params
        )
        accepted = inspect.signature(self._fn).parameters
        for key in self.loss_kwargs:
            if key not in accepted or key in ("logprobs", "old_logprobs", "advantages", "mask"):
                raise ValueError(f"unknown parameter {key!r} for policy loss {loss!r}")
        self.agg = agg
        self.norm_len = norm_len

    def _channel(self, ch, idx: Tensor, mask: Tensor, logprobs: Tensor) -> tuple[Tensor, Tensor]:
        """The channel's advantages for rows `idx` and its loss mask (nonzero_only rows only)."""
        adv = ch.advantages.to(idx.device)[idx].to(device=logprobs.device, dtype=logprobs.dtype)
        m = mask
        if ch.nonzero_only:
            m = mask * (adv != 0).to(mask.dtype).unsqueeze(-1)
        return adv, m

    def _count(self, m: Tensor) -> float:
        """What the aggregation divides by: tokens (token-mean) or non-empty sequences."""
        if self.agg == "token-mean":
            return float((m > 0).sum())
        return float(((m > 0).sum(-1) > 0).sum())

    def denominators(self, mask: Tensor, result: AdvantageResult, rollout_index: Tensor) -> dict[str, float]:
        """Per-channel token (or sequence) counts of a whole mini-batch, for micro-batching."""
        idx = rollout_index.to(torch.long)
        return {ch.name: self._count(self._channel(ch, idx, mask, mask)[1]) for ch in result.channels}

    def describe(self) -> dict[str, Any]:
        return {"loss": self.loss, **self.loss_kwargs, "kl_coef": self.kl_coef, "entropy_coef": self.entropy_coef}

    def __repr__(self) -> str:
        return "PolicyLoss(" + ", ".join(f"{k}={v!r}" for k, v in self.describe().items()) + ")"

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        mask: Tensor,
        result: AdvantageResult,
        rollout_index: Tensor,
        ref_logprobs: Tensor | None = None,
        entropy: Tensor | None = None,
        denominators: dict[str, float] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss over a mini-batch whose row b is rollout `rollout_index[b]` of `result`.

        With `denominators` (from :meth:`denominators` over the whole mini-batch), the rows are
        one micro-batch of it and each channel's loss is scaled to its exact share, so the
        gradients of the micro-batches add up to the gradient of the whole mini-batch
        (token-mean: share of tokens; seq aggregations: share of sequences, which for
        seq-mean-token-sum-norm needs a fixed `norm_len`). KL/entropy terms are not rescaled.

        Returns (loss, metrics); metrics are detached 0-d tensors named `<metric>/<channel>`
        (loss/acc, clip_frac/tool, tokens/tool, ...) plus loss/total.
        """
        if rollout_index.dim() != 1 or rollout_index.shape[0] != logprobs.shape[0]:
            raise ValueError(
                f"rollout_index must be [B] = [{logprobs.shape[0]}], got {tuple(rollout_index.shape)}"
            )
        idx = rollout_index.to(torch.long)
        total: Tensor | None = None
        metrics: dict[str, Tensor] = {}
        for ch in result.channels:
            adv, m = self._channel(ch, idx, mask, logprobs)
            loss_c, met = self._fn(logprobs, old_logprobs, adv, m, **self.loss_kwargs)
            if denominators is not None:  # a micro-batch's exact share of the mini-batch loss
                loss_c = loss_c * (self._count(m) / max(denominators[ch.name], 1e-8))
            total = ch.weight * loss_c if total is None else total + ch.weight * loss_c
            metrics[f"loss/{ch.name}"] = loss_c.detach()
            metrics[f"tokens/{ch.name}"] = (m > 0).sum().detach().float()
            for k, v in met.items():
                metrics[f"{k}/{ch.name}"] = v.detach()
        assert total is not None  # AdvantageResult guarantees at least one channel
        if self.kl_coef > 0:
            if ref_logprobs is None:
                raise ValueError("kl_coef > 0 needs ref_logprobs")
            kl = masked_aggregate(kl_k3(logprobs, ref_logprobs), mask, self.agg, self.norm_len)
            total = total + self.kl_coef * kl
            metrics["kl/ref"] = kl.detach()
        if self.entropy_coef > 0:
            if entropy is None:
                raise ValueError("entropy_coef > 0 needs the per-token entropy")
            ent = masked_aggregate(entropy, mask, self.agg, self.norm_len)
            total = total - self.entropy_coef * ent
            metrics["entropy"] = ent.detach()
        metrics["loss/total"] = total.detach()
        return total, metrics
