"""Clipped policy-gradient losses (PPO with dual clip, DAPO's asymmetric clip, Dr. GRPO's
aggregation), a k3 KL estimator and masked aggregation.

Shapes: logprobs, old_logprobs, mask are [B, L]; advantages [B] are broadcast over tokens.

Deliberate simplifications:
- the log-ratio is zeroed on masked-out tokens and clamped to [-20, 20] before exp (as verl
  does), so garbage at padding positions can neither overflow nor leak NaN into the gradient;
- the diagnostic metrics (clip fractions, approx_kl, ratio_mean) are always token means over
  the masked tokens, whatever `agg` is; approx_kl is the k1 estimator mean(old - new);
- "seq-mean-*" aggregations count only sequences with at least one masked token, so a row
  excluded by a mask (HDPO tool term) does not dilute the mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metis.utils.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
_LOG_RATIO_CLAMP = 20.0


def _check_shapes(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, L], got shape {tuple(logprobs.shape)}")
    if old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"mask {tuple(mask.shape)} must have the same shape"
        )


def masked_aggregate(values: Tensor, mask: Tensor, agg: str = "token-mean", norm_len: int | None = None) -> Tensor:
    """Reduce per-token `values` [B, L] over the tokens where `mask` is non-zero.

    token-mean: sum(v * m) / sum(m).
    seq-mean-token-mean: mean over non-empty sequences of each sequence's token mean.
    seq-mean-token-sum-norm (Dr. GRPO): sum(v * m) / (num non-empty sequences * norm_len), with
    norm_len defaulting to L (a constant, so long answers are not down-weighted per token).
    An all-zero mask gives 0 * values.sum() (0, still connected to the graph; non-finite
    entries are zeroed first).
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")
    m = mask.to(values.dtype)
    v = torch.where(m > 0, values, torch.zeros_like(values)) * m
    tok_per_seq = m.sum(dim=-1)
    nonempty = tok_per_seq > 0
    if not bool(nonempty.any()):
        return _zero_like_graph(values)
    if agg == "token-mean":
        return v.sum() / m.sum()
    n_seq = nonempty.sum().to(values.dtype)
    if agg == "seq-mean-token-mean":
        per_seq = v.sum(dim=-1) / tok_per_seq.clamp(min=1e-8)
        return (per_seq * nonempty.to(values.dtype)).sum() / n_seq
    length = values.shape[-1] if norm_len is None else norm_len
    if length <= 0:
        raise ValueError(f"norm_len must be > 0, got {norm_len!r}")
    return v.sum() / (n_seq * length)


def _zero_like_graph(values: Tensor) -> Tensor:
    """0 that is still connected to `values`' graph (non-finite entries cannot turn it into NaN)."""
    return 0.0 * torch.where(torch.isfinite(values), values, torch.zeros_like(values)).sum()


def _masked_token_mean(values: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(torch.float32)
    denom = m.sum()
    if denom <= 0:
        return torch.zeros((), device=values.device)
    return (torch.where(m > 0, values.detach().float(), torch.zeros_like(m)) * m).sum() / denom


@POLICY_LOSSES.register("ppo")
def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    agg: str = "token-mean",
    norm_len: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Dual-clip PPO surrogate; returns (loss, metrics of 0-d detached tensors).

    ratio = exp(logp - old); pg1 = -A * ratio; pg2 = -A * clip(ratio, 1 - clip_low, 1 + clip_high);
    pg = max(pg1, pg2); for A < 0 and dual_clip = c: pg = min(pg, -A * c) (dual_clip=None turns
    this off). clip_high > clip_low is DAPO's clip-higher.
    Metrics: clip_frac (masked tokens with pg2 > pg1, i.e. the clipped branch is the active
    one), dual_clip_frac (masked tokens with A < 0 whose loss is capped at -A * c), approx_kl
    (k1: masked mean of old - new), ratio_mean.
    """
    _check_shapes(logprobs, old_logprobs, mask)
    if advantages.dim() != 1 or advantages.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages must be [B] = [{logprobs.shape[0]}], got {tuple(advantages.shape)}")
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got {clip_low}, {clip_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 or None, got {dual_clip!r}")
    m = mask > 0
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    log_ratio = log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(-1).expand_as(logprobs)
    pg1 = -adv * ratio
    pg2 = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg1, pg2)
    clipped = pg2 > pg1
    if dual_clip is not None:
        pg3 = -adv * dual_clip
        neg = adv < 0
        dual = neg & (pg > pg3)
        pg = torch.where(neg, torch.minimum(pg, pg3), pg)
    else:
        dual = torch.zeros_like(m)
    if not bool(m.any()):
        loss = _zero_like_graph(logprobs)
    else:
        loss = masked_aggregate(pg, mask, agg, norm_len)
    metrics = {
        "clip_frac": _masked_token_mean(clipped.float(), mask),
        "dual_clip_frac": _masked_token_mean(dual.float(), mask),
        "approx_kl": _masked_token_mean(-log_ratio, mask),
        "ratio_mean": _masked_token_mean(ratio, mask),
    }
    return loss, metrics


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi_theta || pi_ref): exp(d) - d - 1 with d = ref - logp >= 0.

    d is clamped to [-20, 20] for numerical safety.
    """
    d = (ref_logprobs.detach() - logprobs).clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0
