"""Per-token log-probs of trajectories' response tokens under a model (the trainer's forward)."""

from __future__ import annotations

from typing import Sequence

import torch

from bench.legacy.batching import model_inputs, response_positions, response_tensors
from metis.core.trajectory import Trajectory


def response_logprobs(model, trajs: Sequence[Trajectory], pad_id: int, with_entropy: bool = False,
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, R]`` (float32) of each response token, and optionally the entropies.

    Only the logits at response positions go through the (vocabulary-sized) log-softmax, in
    float32. Positions past a row's response are 0; use the trajectory masks to ignore them.
    """
    param = next(model.parameters())
    inputs = model_inputs(trajs, pad_id, model.config.image_token_id, param.device, param.dtype)
    logits = model(**inputs, use_cache=False).logits
    rows, cols, valid = response_positions(trajs)
    targets, _ = response_tensors(trajs)
    picked = logits[rows.to(logits.device), cols.to(logits.device)].float()  # [B, R, V]
    logp_all = torch.log_softmax(picked, dim=-1)
    logp = logp_all.gather(-1, targets.to(logits.device).unsqueeze(-1)).squeeze(-1)
    logp = logp * valid.to(logp.device)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1) * valid.to(logp.device)
    return logp, entropy
