"""Truncated importance sampling (TIS) for the gap between the rollout engine and the trainer.

The tokens were sampled by the engine (vLLM: other kernels, bf16), whose probabilities differ
slightly from the trainer's for the same weights. With per-token engine log-probs ``q`` and the
trainer's behaviour log-probs ``p_old``, each token's policy-gradient term is weighted by
``w = min(exp(p_old - q), cap)`` (detached), which makes the update unbiased for the trainer's
policy up to the truncation at ``cap``. Tokens without an engine log-prob get ``w = 1``.

:func:`scale_grad` applies ``w`` to the gradient only: the returned log-probs have the same
values (ratios, clip fractions and reported losses are unchanged) and their gradient is
multiplied by ``w`` per token, which for a loss that is a per-token sum/mean of terms in the
log-probs is the same as weighting each token's loss by ``w``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from metis.core.trajectory import Trajectory


def engine_logprob_tensor(trajs: Sequence[Trajectory], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, width]`` engine log-probs at the response positions of the model's tokens, and where
    they are known (the engine reports one per model token, in order)."""
    values = torch.zeros(len(trajs), width)
    known = torch.zeros(len(trajs), width, dtype=torch.bool)
    for row, t in enumerate(trajs):
        positions = [j for j, m in enumerate(t.response_mask[:width]) if m][: len(t.engine_logprobs)]
        if positions:
            idx = torch.tensor(positions)
            values[row, idx] = torch.tensor(t.engine_logprobs[: len(positions)])
            known[row, idx] = True
    return values, known


def tis_weights(old_logprobs: torch.Tensor, engine_logprobs: torch.Tensor, known: torch.Tensor,
                cap: float) -> torch.Tensor:
    """``min(exp(old - engine), cap)`` where the engine's log-prob is known, 1 elsewhere (detached)."""
    if cap <= 0:
        raise ValueError(f"rollout.engine.tis_cap must be > 0 (or null: off), got {cap}")
    log_ratio = (old_logprobs.detach().float() - engine_logprobs.float()).clamp(max=20.0)
    w = torch.exp(log_ratio).clamp(max=cap)
    return torch.where(known, w, torch.ones_like(w))


def scale_grad(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x`` in value, ``w * dx`` in gradient."""
    w = w.to(x.dtype)
    return x * w + (x * (1 - w)).detach()


def apply_tis(logprobs: torch.Tensor, old_logprobs: torch.Tensor, trajs: Sequence[Trajectory], mask: torch.Tensor,
              cap: float | None) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's hook: log-probs whose gradient carries the TIS weights, and their metrics
    (``tis/weight_mean``, ``tis/clipped_frac`` over model tokens with an engine log-prob).
    A no-op when ``cap`` is None or no trajectory has engine log-probs."""
    if cap is None or not any(t.engine_logprobs for t in trajs):
        return logprobs, {}
    engine, known = engine_logprob_tensor(trajs, logprobs.shape[1])
    engine, known = engine.to(logprobs.device), known.to(logprobs.device) & (mask > 0)
    w = tis_weights(old_logprobs, engine, known, cap)
    n = int(known.sum())
    metrics = {} if n == 0 else {
        "tis/weight_mean": float(w[known].mean()),
        "tis/clipped_frac": float((w[known] >= cap).float().mean()),
    }
    return scale_grad(logprobs, w), metrics
