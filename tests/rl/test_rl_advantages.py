"""GRPO / HDPO advantages on small groups, checked against hand-computed values."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metis.rl import RewardScheme, RolloutScores, grpo_advantages, hdpo_advantages

S37 = math.sqrt(3 / 7)


def close(t, expected, tol=1e-5):
    assert t.tolist() == pytest.approx(expected, abs=tol)


def test_grpo_one_right_of_four():
    # mean 0.25, unbiased var (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5
    close(grpo_advantages(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 0, 0])), [1.5, -0.5, -0.5, -0.5])


def test_grpo_normalize_std_false_and_constant_groups():
    adv = grpo_advantages(torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long), normalize_std=False)
    close(adv, [0.75, -0.25, -0.25, -0.25])
    close(grpo_advantages(torch.full((3,), 0.1), torch.tensor([1, 1, 1])), [0.0, 0.0, 0.0])  # all wrong
    close(grpo_advantages(torch.ones(3), torch.tensor([1, 1, 1])), [0.0, 0.0, 0.0])  # all right


def test_grpo_interleaved_and_singleton_groups():
    # group 5: [1, 0, 0] -> mean 1/3, var 1/3; group 2: [0, 1, 1]; group 9: one rollout -> 0
    ids = torch.tensor([5, 2, 5, 2, 5, 2, 9])
    r = torch.tensor([1.0, 0, 0, 1, 0, 1, 1])
    s = math.sqrt(1 / 3)
    close(grpo_advantages(r, ids), [(2 / 3) / s, -(2 / 3) / s, -(1 / 3) / s, (1 / 3) / s, -(1 / 3) / s, (1 / 3) / s, 0])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.0, 0.1, 0.9, 1.0])), min_size=1, max_size=20))
def test_grpo_matches_per_group_loop(rows):
    ids = torch.tensor([g for g, _ in rows])
    r = torch.tensor([x for _, x in rows], dtype=torch.float64)
    adv = grpo_advantages(r, ids)
    for g in ids.unique():
        sel = ids == g
        x = r[sel]
        exp = torch.zeros_like(x) if x.numel() < 2 else (x - x.mean()) / (x.std() + 1e-6)
        assert adv[sel].tolist() == pytest.approx(exp.tolist(), abs=1e-5)


def scores(r_ans, t, groups=None, r_fmt=None):
    n = len(r_ans)
    return RolloutScores(
        r_ans=torch.tensor(r_ans, dtype=torch.float32),
        r_fmt=torch.tensor(r_fmt if r_fmt is not None else [1.0] * n),
        num_tool_calls=torch.tensor(t),
        group_ids=torch.tensor(groups if groups is not None else [0] * n),
    )


def test_hdpo_mixed_tool_counts():
    res = RewardScheme("hdpo").compute(scores([1, 1, 1, 0], [0, 1, 3, 0]))
    # r_acc = [1, 1, 1, 0.1]: mean 0.775, std 0.45
    close(res.channel("acc").advantages, [0.5, 0.5, 0.5, -1.5])
    # r_tool over Q = {0,1,2}: [1, 1/2, 1/4] -> deviations [5, -1, -4]/12, std sqrt(7/48)
    close(res.channel("tool").advantages, [5 / 3 * S37, -1 / 3 * S37, -4 / 3 * S37, 0.0])
    assert res.channel("acc").weight == 1.0 and res.channel("tool").weight == 0.15
    assert res.channel("tool").nonzero_only and not res.channel("acc").nonzero_only
    assert res.metrics["rho_Q"] == 0.75
    assert res.metrics["efficiency_active_groups"] == 1.0
    assert res.metrics["frac_reward_zero_std"] == 0.0
    assert res.rewards["r_tool"].tolist() == [1.0, 0.5, 0.25, 0.0]
    assert res.rewards["r_acc"].tolist() == pytest.approx([1.0, 1.0, 1.0, 0.1])
    assert res.metrics["adv/tool/max"] == pytest.approx(5 / 3 * S37, abs=1e-5)
    assert res.metrics["adv/acc/mean"] == pytest.approx(0.0, abs=1e-7)
    assert res.metrics["adv/acc/std"] == pytest.approx(math.sqrt(0.75), abs=1e-5)
    assert set(res.rewards) == {"r_ans", "r_fmt", "r_acc", "r_tool"}


def test_hdpo_eligible_correct_and_used_tools():
    res = RewardScheme("hdpo", eligible="correct_and_used_tools").compute(scores([1, 1, 1, 0], [0, 1, 3, 0]))
    # Q = {1, 2}: r_tool [1/2, 1/4] -> +-0.125 / (0.125 * sqrt 2)
    close(res.channel("tool").advantages, [0.0, 1 / math.sqrt(2), -1 / math.sqrt(2), 0.0])
    assert res.metrics["rho_Q"] == 0.5


def test_hdpo_normalize_std_false():
    res = RewardScheme("hdpo", normalize_std=False).compute(scores([1, 1, 1, 0], [0, 1, 3, 0]))
    close(res.channel("acc").advantages, [0.225, 0.225, 0.225, -0.675])
    close(res.channel("tool").advantages, [5 / 12, -1 / 12, -4 / 12, 0.0])


def test_hdpo_all_wrong_one_right_all_right():
    all_wrong = RewardScheme("hdpo").compute(scores([0, 0, 0], [0, 2, 1]))
    close(all_wrong.channel("acc").advantages, [0, 0, 0])
    close(all_wrong.channel("tool").advantages, [0, 0, 0])
    assert all_wrong.metrics["rho_Q"] == 0.0 and all_wrong.metrics["frac_reward_zero_std"] == 1.0
    # |Q| = 1: the efficiency channel is silent, accuracy is not
    one = RewardScheme("hdpo").compute(scores([0, 1, 0], [0, 2, 1]))
    close(one.channel("tool").advantages, [0, 0, 0])
    close(one.channel("acc").advantages, [-1 / math.sqrt(3), 2 / math.sqrt(3), -1 / math.sqrt(3)])
    assert one.metrics["efficiency_active_groups"] == 0.0
    # all right with different T: accuracy silent, efficiency ranks 1/(T+1) = [1, 1/3]
    right = RewardScheme("hdpo").compute(scores([1, 1], [0, 2]))
    close(right.channel("acc").advantages, [0, 0])
    close(right.channel("tool").advantages, [1 / math.sqrt(2), -1 / math.sqrt(2)])
    # all right, same T: both silent; the group has |Q| = 2 but is not "active"
    same = RewardScheme("hdpo").compute(scores([1, 1], [1, 1]))
    close(same.channel("tool").advantages, [0, 0])
    assert same.metrics["efficiency_active_groups"] == 0.0 and same.metrics["rho_Q"] == 0.0


def test_hdpo_interleaved_groups_metrics():
    # group 4 = rollouts 0, 2, 4 (two right, T 0 and 1); group 1 = rollouts 1, 3 (both wrong)
    s = scores([1, 0, 1, 0, 0], [0, 3, 1, 0, 2], groups=[4, 1, 4, 1, 4])
    res = RewardScheme("hdpo").compute(s)
    close(res.channel("tool").advantages, [1 / math.sqrt(2), 0, -1 / math.sqrt(2), 0, 0])
    assert res.metrics["efficiency_active_groups"] == 0.5
    assert res.metrics["frac_reward_zero_std"] == 0.5
    assert res.metrics["rho_Q"] == pytest.approx(0.4)
    # group 4 r_acc = [1, 1, 0.1]: mean 0.7, deviations [0.3, 0.3, -0.6], std sqrt(0.27)
    a = 0.3 / math.sqrt(0.27)
    close(res.channel("acc").advantages, [a, 0, a, 0, -2 * a])


def test_hdpo_advantages_function():
    acc, tool = hdpo_advantages(
        torch.tensor([1.0, 1.0, 0.1]), torch.tensor([1.0, 0.5, 0.0]), torch.tensor([True, True, False]),
        torch.tensor([0, 0, 0]),
    )
    close(tool, [1 / math.sqrt(2), -1 / math.sqrt(2), 0.0])
    close(acc, [1 / math.sqrt(3), 1 / math.sqrt(3), -2 / math.sqrt(3)])


def test_types_validate_shapes():
    from metis.rl import AdvantageChannel, AdvantageResult

    with pytest.raises(ValueError, match="num_tool_calls"):
        RolloutScores(r_ans=[1.0, 0.0], r_fmt=[1.0, 1.0], num_tool_calls=[0], group_ids=[0, 0])
    with pytest.raises(ValueError, match="1-D"):
        RolloutScores(r_ans=[[1.0]], r_fmt=[[1.0]], num_tool_calls=[[0]], group_ids=[[0]])
    with pytest.raises(ValueError, match="r_ans"):
        RolloutScores(r_ans=[2.0], r_fmt=[1.0], num_tool_calls=[0], group_ids=[0])
    s = RolloutScores(r_ans=[1, 0], r_fmt=[True, False], num_tool_calls=[0, 2], group_ids=[3, 3])
    assert s.r_ans.dtype == torch.float32 and s.group_ids.dtype == torch.long and len(s) == 2
    with pytest.raises(ValueError, match="same length"):
        AdvantageResult([AdvantageChannel("a", torch.zeros(2), 1.0), AdvantageChannel("b", torch.zeros(3), 1.0)])
    with pytest.raises(ValueError, match="reward 'r'"):
        AdvantageResult([AdvantageChannel("a", torch.zeros(2), 1.0)], rewards={"r": torch.zeros(3)})
