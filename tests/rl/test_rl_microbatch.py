"""Micro-batched losses scaled by the mini-batch denominators give the full mini-batch gradient."""

from __future__ import annotations

import pytest
import torch

from metis.rl.scheme import PolicyLoss, RewardScheme
from metis.rl.types import RolloutScores


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_microbatches_add_up_to_the_minibatch_gradient(agg):
    torch.manual_seed(0)
    scores = RolloutScores(
        r_ans=torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]), r_fmt=torch.ones(6),
        num_tool_calls=torch.tensor([0, 2, 1, 1, 0, 3]), group_ids=torch.tensor([0, 0, 0, 1, 1, 1]))
    result = RewardScheme("hdpo").compute(scores)
    objective = PolicyLoss(agg=agg, norm_len=8 if agg == "seq-mean-token-sum-norm" else None)
    theta = torch.randn(6, 8, requires_grad=True)
    old = torch.randn(6, 8) * 0.1
    mask = (torch.rand(6, 8) > 0.3).float()
    rows = torch.arange(6)
    full, _ = objective(theta * 0.1, old, mask, result, rows)
    (g_full,) = torch.autograd.grad(full, theta)
    den = objective.denominators(mask, result, rows)
    total = torch.zeros(())
    for part in (torch.tensor([0, 3]), torch.tensor([1, 2, 5]), torch.tensor([4])):
        loss, _ = objective(theta[part] * 0.1, old[part], mask[part], result, part, denominators=den)
        total = total + loss
    (g_micro,) = torch.autograd.grad(total, theta)
    assert torch.allclose(total, full, atol=1e-6)
    assert torch.allclose(g_micro, g_full, atol=1e-6)
