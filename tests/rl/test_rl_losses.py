"""Clipped policy loss, aggregation modes and the two-channel objective, against hand-computed numbers."""

import math

import pytest
import torch

from metis.rl import AdvantageChannel, AdvantageResult, PolicyLoss, clipped_policy_loss, masked_aggregate

# old = 0, new = log(ratio). Row 0 has A = +1, row 1 has A = -1.
RATIOS = torch.tensor([[1.0, 1.5, 0.5], [1.0, 0.7, 4.0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)
# per-token loss with clip 0.2 / dual clip 3:
#   row 0: r=1 -> -1; r=1.5 -> max(-1.5, -1.2) = -1.2 (clipped); r=0.5 -> max(-0.5, -0.8) = -0.5
#   row 1: r=1 -> 1;  r=0.7 -> max(0.7, 0.8) = 0.8 (clipped); r=4 -> min(max(4, 1.2), 3) = 3 (dual)
PG = [[-1.0, -1.2, -0.5], [1.0, 0.8, 3.0]]


def inputs():
    logp = RATIOS.log().clone().requires_grad_(True)
    return logp, torch.zeros_like(RATIOS)


def test_token_mean_clip_and_dual_clip_fractions():
    logp, old = inputs()
    loss, m = clipped_policy_loss(logp, old, ADV, torch.ones(2, 3))
    assert loss.item() == pytest.approx(2.1 / 6)
    assert m["clip_frac"].item() == pytest.approx(2 / 6)
    assert m["dual_clip_frac"].item() == pytest.approx(1 / 6)
    assert m["ratio_mean"].item() == pytest.approx(8.7 / 6)
    k1 = -sum(math.log(r) for r in RATIOS.flatten().tolist()) / 6
    assert m["approx_kl"].item() == pytest.approx(k1, abs=1e-6)
    assert all(v.dim() == 0 and not v.requires_grad for v in m.values())
    loss.backward()
    # d/dlogp of -A * r = -A * r on unclipped tokens, 0 on clipped and dual-clipped ones
    expected = torch.tensor([[-1.0, 0.0, -0.5], [1.0, 0.0, 0.0]], dtype=torch.float64) / 6
    torch.testing.assert_close(logp.grad, expected)


def test_mask_excludes_tokens():
    logp, old = inputs()
    loss, m = clipped_policy_loss(logp, old, ADV, torch.tensor([[1.0, 1, 1], [1, 1, 0]]))
    assert loss.item() == pytest.approx((-2.7 + 1.8) / 5)
    assert m["clip_frac"].item() == pytest.approx(2 / 5)
    assert m["dual_clip_frac"].item() == 0.0


def test_no_dual_clip_and_asymmetric_clip():
    logp, old = inputs()
    loss, m = clipped_policy_loss(logp, old, ADV, torch.ones(2, 3), dual_clip=None)
    assert loss.item() == pytest.approx(3.1 / 6)
    assert m["dual_clip_frac"].item() == 0.0
    loss, _ = clipped_policy_loss(logp, old, ADV, torch.ones(2, 3), clip_high=0.28)
    assert loss.item() == pytest.approx((-1 - 1.28 - 0.5 + 1 + 0.8 + 3) / 6)  # 1.5 clipped to 1.28


@pytest.mark.parametrize(
    "agg, norm_len, expected",
    [
        ("token-mean", None, (-2.7 + 4.0) / 5),
        ("seq-mean-token-mean", None, (-0.9 + 2.0) / 2),  # row means -2.7/3 and (1 + 3)/2; empty row 2 excluded
        ("seq-mean-token-sum-norm", None, (-2.7 + 4.0) / (2 * 3)),
        ("seq-mean-token-sum-norm", 4, (-2.7 + 4.0) / (2 * 4)),
    ],
)
def test_aggregations(agg, norm_len, expected):
    ratios = torch.cat([RATIOS, torch.ones(1, 3, dtype=torch.float64)])
    logp = ratios.log().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 5.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 1], [0, 0, 0]])
    loss, _ = clipped_policy_loss(logp, torch.zeros_like(logp), adv, mask, agg=agg, norm_len=norm_len)
    assert loss.item() == pytest.approx(expected)


def test_empty_mask_is_zero_and_connected():
    logp = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    loss, m = clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([1.0]), torch.zeros(1, 2))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logp.grad is not None and torch.equal(logp.grad, torch.zeros(1, 2))
    assert m["clip_frac"].item() == 0.0
    agg = masked_aggregate(logp, torch.zeros(1, 2), "seq-mean-token-mean")
    assert agg.item() == 0.0 and agg.requires_grad


def test_padding_garbage_does_not_leak():
    logp = torch.tensor([[0.0, float("nan")]], requires_grad=True)
    loss, _ = clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert loss.item() == pytest.approx(-2.0)
    assert logp.grad.tolist() == [[-2.0, 0.0]]


def test_shape_errors():
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="same shape"):
        clipped_policy_loss(torch.zeros(2, 3), torch.zeros(2, 2), torch.zeros(2), torch.ones(2, 3))


# ----------------------------------------------------------------------------- objective
def two_channel_result():
    return AdvantageResult(
        channels=[
            AdvantageChannel("acc", torch.tensor([1.0, -0.5, 0.25]), 1.0),
            AdvantageChannel("tool", torch.tensor([2.0, 0.0, 0.0]), 0.15, nonzero_only=True),
        ]
    )


def test_objective_tool_term_averaged_over_nonzero_rows_only():
    # mini-batch rows are rollouts [2, 0, 1]; ratio 1 everywhere so the per-token loss is -A
    logp = torch.zeros(3, 2, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    obj = PolicyLoss()
    loss, m = obj(logp, torch.zeros(3, 2), mask, two_channel_result(), torch.tensor([2, 0, 1]))
    # acc: rows A = [0.25, 1.0, -0.5] with [2, 1, 2] tokens -> -(0.5 + 1.0 - 1.0) / 5 = -0.1
    assert m["loss/acc"].item() == pytest.approx(-0.1)
    # tool: only row 1 (A_tool = 2, one token) -> -2.0; averaging over all 5 tokens would give -0.4
    assert m["loss/tool"].item() == pytest.approx(-2.0)
    assert m["tokens/tool"].item() == 1.0 and m["tokens/acc"].item() == 5.0
    assert loss.item() == pytest.approx(-0.1 + 0.15 * -2.0)
    assert m["loss/total"].item() == pytest.approx(-0.4)
    assert {"clip_frac/acc", "clip_frac/tool", "dual_clip_frac/tool", "approx_kl/acc", "ratio_mean/tool"} <= set(m)
    loss.backward()
    # same ratio in both terms: row 1 token 0 gets -1/5 (acc) + 0.15 * -2/1 (tool)
    assert logp.grad[1, 0].item() == pytest.approx(-0.2 - 0.3)
    assert logp.grad[0, 0].item() == pytest.approx(-0.25 / 5)
    assert logp.grad[1, 1].item() == 0.0


def test_objective_all_zero_tool_channel_is_silent():
    logp = torch.zeros(2, 2, requires_grad=True)
    loss, m = PolicyLoss()(logp, torch.zeros(2, 2), torch.ones(2, 2), two_channel_result(),
                                torch.tensor([1, 2]))
    assert m["loss/tool"].item() == 0.0 and m["tokens/tool"].item() == 0.0
    assert loss.item() == pytest.approx(-(-0.5 + 0.25) / 2)
    loss.backward()


def test_objective_kl_and_entropy():
    logp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.full((1, 2), math.log(2.0))
    ent = torch.tensor([[1.0, 3.0]])
    res = AdvantageResult(channels=[AdvantageChannel("acc", torch.tensor([1.0]), 1.0)])
    obj = PolicyLoss(kl_coef=0.1, entropy_coef=0.01)
    loss, m = obj(logp, torch.zeros(1, 2), torch.ones(1, 2), res, torch.tensor([0]), ref_logprobs=ref, entropy=ent)
    k3 = 2.0 - math.log(2.0) - 1.0  # exp(d) - d - 1 with d = ref - logp = ln 2
    assert m["kl/ref"].item() == pytest.approx(k3)
    assert m["entropy"].item() == pytest.approx(2.0)
    assert loss.item() == pytest.approx(-1.0 + 0.1 * k3 - 0.01 * 2.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        obj(logp, torch.zeros(1, 2), torch.ones(1, 2), res, torch.tensor([0]))


def test_objective_with_a_real_scheme():
    from metis.rl import RewardScheme, RolloutScores

    s = RolloutScores(r_ans=[1, 1, 0, 1], r_fmt=[1, 1, 1, 1], num_tool_calls=[0, 2, 0, 1], group_ids=[0, 0, 0, 0])
    res = RewardScheme("hdpo").compute(s)
    logp = torch.zeros(4, 3, requires_grad=True)
    loss, m = PolicyLoss()(logp, torch.zeros(4, 3), torch.ones(4, 3), res, torch.arange(4))
    a = res.channel("acc").advantages
    t = res.channel("tool").advantages
    assert loss.item() == pytest.approx((-a.mean() + 0.15 * -(t[t != 0].sum() / 3)).item(), abs=1e-6)
    assert m["tokens/tool"].item() == 9.0
