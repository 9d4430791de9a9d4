"""Properties of the simulated training that follow from the schemes' formulas (small runs)."""

from __future__ import annotations

import pytest
import torch

from metis.rl import PolicyLoss, RewardScheme
from metis.rl.advantages import hdpo_advantages
from metis.rl.rewards import accuracy_reward, tool_reward
from metis.sim import SimConfig, Simulator, build_scenario, simulate
from metis.sim.engine import initial_logits

torch.set_num_threads(1)


def two_classes(p_hard: list[float], p_easy: float = 0.85, fmt_fail_rate: float = 0.0):
    return build_scenario(dict(name="two", t_max=4, fmt_fail_rate=fmt_fail_rate, classes=[
        dict(name="easy", weight=0.5, needs_tool=False, p=[p_easy]),
        dict(name="hard", weight=0.5, needs_tool=True, p=p_hard)]))


def test_grpo_moves_tool_use_only_where_accuracy_differs():
    """Accuracy-only GRPO: on a class whose p is the same for every T, correctness is independent
    of T, so the expected policy gradient there is 0: averaged over seeds the tool distribution stays
    at the start. On the hard class (p(0) << p(1)) tool use goes up."""
    sc = two_classes([0.1, 0.7])
    h = simulate(sc, RewardScheme("grpo"), PolicyLoss(), SimConfig(steps=150, batch_items=16), seeds=range(8))
    start = torch.softmax(initial_logits(SimConfig(), 4).double(), -1)
    assert h.metrics["tool_call_rate/easy"][0] == pytest.approx(0.95)
    final_easy = h.metrics["tool_call_rate/easy"][-1]
    assert abs(final_easy.mean() - 0.95) < 0.04, final_easy
    assert abs(h.metrics["mean_T/easy"][-1].mean() - float((start * torch.arange(5)).sum())) < 0.25
    assert h.metrics["tool_call_rate/hard"][-1].min() > 0.99          # where accuracy differs, it moves
    assert h.metrics["rho_Q"][1:].max() == 0.0                   # no efficiency channel at all


@pytest.mark.parametrize("name, params", [
    ("normalize_then_sum", {"w_tool": 2.0, "condition_tool_on_correct": False}),
    ("coupled_penalty", {"lam": 3.0}),
])
def test_correctness_blind_efficiency_reward_kills_necessary_calls(name, params):
    """r_tool (or -lam T) paid to wrong answers too: on hard items where the no-tool answer is right
    2% of the time, 'fast but wrong' wins and the necessary-tool rate goes to ~0; HDPO (efficiency
    advantage only among correct rollouts) keeps the calls."""
    sc = two_classes([0.02, 0.7])
    cfg = SimConfig(steps=100, batch_items=16)
    blind = simulate(sc, RewardScheme(name, **params), PolicyLoss(), cfg, seeds=range(3))
    assert blind.metrics["necessary_tool_rate"][-1].max() < 0.05
    assert blind.metrics["accuracy/hard"][-1].max() < 0.1
    hdpo = simulate(sc, RewardScheme("hdpo"), PolicyLoss(), cfg, seeds=range(3))
    assert hdpo.metrics["necessary_tool_rate"][-1].min() > 0.95
    assert hdpo.metrics["unnecessary_tool_rate"][-1].max() < 0.5  # and it does cut the useless calls


def test_tool_bonus_pushes_tool_use_up():
    sc = two_classes([0.1, 0.7])
    h = simulate(sc, RewardScheme("tool_bonus"), PolicyLoss(), SimConfig(steps=60, batch_items=16), seeds=range(2))
    assert h.metrics["unnecessary_tool_rate"][-1].min() > 0.97


def test_simulated_hdpo_advantages_equal_the_training_code():
    sc = two_classes([0.1, 0.6, 0.7], fmt_fail_rate=0.2)
    sim = Simulator(sc, RewardScheme("hdpo"), PolicyLoss(), SimConfig(batch_items=8, group_size=6), seeds=[0, 1])
    fmt_failures = 0
    for _ in range(3):
        for b in sim.step():
            s = b.scores
            correct = s.r_ans > 0
            acc, tool = hdpo_advantages(accuracy_reward(s.r_ans.double(), s.r_fmt.double(), 0.9, 0.1),
                                        tool_reward(s.num_tool_calls, correct, "inverse"), correct, s.group_ids)
            torch.testing.assert_close(b.result.channel("acc").advantages, acc)
            torch.testing.assert_close(b.result.channel("tool").advantages, tool)
            assert b.result.metrics["rho_Q"] == pytest.approx(float((tool != 0).double().mean()))
            fmt_failures += int((s.r_fmt == 0).sum())
    assert fmt_failures > 0  # r_acc really mixes r_ans and r_fmt here


def test_one_update_is_the_hdpo_policy_gradient():
    """SGD(lr=1) step == -grad of  mean_N(-A_acc logpi) + w_tool * mean_{A_tool != 0}(-A_tool logpi),
    i.e. the dual-clip PPO loss at ratio 1 with HDPO's nonzero-only tool term."""
    sc = two_classes([0.1, 0.7])
    sim = Simulator(sc, RewardScheme("hdpo", w_tool=0.3), PolicyLoss(), SimConfig(lr=1.0, batch_items=8), seeds=[5])
    before = sim.logits.detach().clone()
    pi = torch.softmax(before[0].double(), -1)
    (b,) = sim.step()
    acc, tool = b.result.channel("acc").advantages.double(), b.result.channel("tool").advantages.double()
    onehot = torch.nn.functional.one_hot(b.scores.num_tool_calls, 5).double()
    score = onehot - pi[b.rows]                                   # d log pi(T) / d logits of its row
    g_rollout = acc[:, None] * score / len(acc)
    nz = tool != 0
    if nz.any():
        g_rollout = g_rollout + 0.3 * tool[:, None] * score * nz[:, None] / nz.sum()
    expected = torch.zeros(2, 5, dtype=torch.float64).index_add_(0, b.rows, g_rollout)
    torch.testing.assert_close((sim.logits.detach()[0] - before[0]).double(), expected, atol=1e-5, rtol=1e-4)


def test_a_seed_runs_the_same_alone_or_with_others():
    sc = two_classes([0.1, 0.7])
    cfg = SimConfig(steps=20, batch_items=8)
    alone = simulate(sc, RewardScheme("hdpo"), PolicyLoss(), cfg, seeds=[3])
    both = simulate(sc, RewardScheme("hdpo"), PolicyLoss(), cfg, seeds=[1, 3])
    for k in ("accuracy", "unnecessary_tool_rate", "rho_Q"):
        torch.testing.assert_close(torch.as_tensor(alone.metrics[k][:, 0]), torch.as_tensor(both.metrics[k][:, 1]),
                                   equal_nan=True)


def test_exact_metrics_from_the_policy():
    sc = build_scenario(dict(name="m", t_max=2, classes=[
        dict(name="a", weight=1.0, needs_tool=False, p=[0.8, 0.8, 0.8]),
        dict(name="b", weight=3.0, needs_tool=True, p=[0.0, 0.5, 1.0])]))
    sim = Simulator(sc, RewardScheme("grpo"), PolicyLoss(), SimConfig(), seeds=[0])
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.4, 0.4]])
    with torch.no_grad():
        sim.logits.copy_(probs.log()[None])
    m = sim.exact_metrics()
    acc_b = 0.4 * 0.5 + 0.4 * 1.0
    assert float(m["accuracy/a"]) == pytest.approx(0.8)
    assert float(m["accuracy/b"]) == pytest.approx(acc_b)
    assert float(m["accuracy"]) == pytest.approx(0.25 * 0.8 + 0.75 * acc_b)
    assert float(m["unnecessary_tool_rate"]) == pytest.approx(0.5)
    assert float(m["necessary_tool_rate"]) == pytest.approx(0.8)
    assert float(m["mean_T/b"]) == pytest.approx(0.4 + 0.8)
    assert sc.optimal_accuracy(0) == pytest.approx(0.25 * 0.8 + 0.75 * 1.0)
