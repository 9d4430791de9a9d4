"""The other schemes, the coupled-baseline failure HDPO avoids, validation and the YAML configs."""

import math
from pathlib import Path

import pytest
import torch

from metis.rl import REWARD_SCHEMES, PolicyLoss, RewardScheme, RolloutScores

CONF = Path(__file__).resolve().parents[2] / "conf"

# 0: wrong, no tool; 1: right, 9 tool calls; 2: right, no tool; 3: wrong, 2 tool calls (all well formed)
DILEMMA = RolloutScores(
    r_ans=torch.tensor([0.0, 1.0, 1.0, 0.0]),
    r_fmt=torch.ones(4),
    num_tool_calls=torch.tensor([0, 9, 0, 2]),
    group_ids=torch.zeros(4, dtype=torch.long),
)


def test_registered_schemes():
    assert REWARD_SCHEMES.names() == sorted(
        ["coupled", "coupled_penalty", "grpo", "hdpo", "normalize_then_sum", "tool_bonus"]
    )


@pytest.mark.parametrize(
    "name, params, expected_rewards",
    [
        # r_acc - lam * T: 0.1 - 0 = 0.1 (wrong, no tool) ties 1.0 - 0.9 = 0.1 (right, 9 calls)
        ("coupled_penalty", {"lam": 0.1}, [0.1, 0.1, 1.0, -0.1]),
        # r_acc + alpha * (-T if correct): 0.1 vs 1.0 - 0.9
        ("coupled", {"alpha": 0.1, "tool_reward_shape": "linear"}, [0.1, 0.1, 1.0, 0.1]),
        # r_acc + alpha / (T + 1) for everybody: 0.1 + 1 vs 1.0 + 0.1
        ("coupled", {"alpha": 1.0, "condition_tool_on_correct": False}, [1.1, 1.1, 2.0, 0.1 + 1 / 3]),
    ],
)
def test_coupled_scores_wrong_no_tool_like_right_tool_heavy(name, params, expected_rewards):
    res = RewardScheme(name, **params).compute(DILEMMA)
    assert res.rewards["reward"].tolist() == pytest.approx(expected_rewards)
    adv = res.channels[0].advantages
    assert len(res.channels) == 1
    assert adv[0].item() == pytest.approx(adv[1].item(), abs=1e-6)  # same advantage for both
    assert res.metrics["rho_Q"] == 0.0 and res.metrics["efficiency_active_groups"] == 0.0


def test_coupled_penalty_larger_lambda_prefers_wrong_no_tool():
    res = RewardScheme("coupled_penalty", lam=0.15).compute(DILEMMA)
    assert res.rewards["reward"].tolist() == pytest.approx([0.1, 1.0 - 1.35, 1.0, 0.1 - 0.3])
    adv = res.channels[0].advantages
    assert adv[0] > adv[1]


def test_hdpo_separates_wrong_no_tool_from_right_tool_heavy():
    res = RewardScheme("hdpo").compute(DILEMMA)
    acc, tool = res.channel("acc").advantages, res.channel("tool").advantages
    # r_acc = [0.1, 1, 1, 0.1]: deviations +-0.45, std sqrt(0.27)
    a = 0.45 / math.sqrt(0.27)
    assert acc.tolist() == pytest.approx([-a, a, a, -a], abs=1e-5)
    # Q = {1, 2}: r_tool [0.1, 1] -> [-1/sqrt2, 1/sqrt2]; wrong rollouts get nothing
    assert tool.tolist() == pytest.approx([0.0, -1 / math.sqrt(2), 1 / math.sqrt(2), 0.0], abs=1e-5)
    combined = acc + 0.15 * tool
    assert combined[1].item() == pytest.approx(a - 0.15 / math.sqrt(2), abs=1e-5)  # 0.7599 > 0
    assert combined[0].item() == pytest.approx(-a, abs=1e-5)  # -0.8660
    assert combined[1] > 0 > combined[0]


def test_coupled_default_inverse_conditioned():
    res = RewardScheme("coupled", alpha=0.5).compute(DILEMMA)
    assert res.rewards["reward"].tolist() == pytest.approx([0.1, 1.05, 1.5, 0.1])
    assert res.channels[0].name == "coupled" and res.channels[0].weight == 1.0


def test_grpo_scheme():
    res = RewardScheme("grpo").compute(DILEMMA)
    a = 0.45 / math.sqrt(0.27)
    assert [c.name for c in res.channels] == ["acc"]
    assert res.channels[0].advantages.tolist() == pytest.approx([-a, a, a, -a], abs=1e-5)
    assert res.metrics["rho_Q"] == 0.0
    assert set(res.rewards) == {"r_ans", "r_fmt", "r_acc", "r_tool"}


def test_tool_bonus():
    res = RewardScheme("tool_bonus").compute(DILEMMA)
    # 0.8 r_ans + 0.2 r_fmt + 1.2 * used * correct = [0.2, 2.2, 1.0, 0.2]
    r = [0.2, 2.2, 1.0, 0.2]
    assert res.rewards["reward"].tolist() == pytest.approx(r)
    m = sum(r) / 4
    sd = math.sqrt(sum((x - m) ** 2 for x in r) / 3)
    assert res.channels[0].advantages.tolist() == pytest.approx([(x - m) / sd for x in r], abs=1e-5)


def test_normalize_then_sum_rewards_wrong_no_tool():
    res = RewardScheme("normalize_then_sum").compute(DILEMMA)
    # r_tool = 1/(T+1) for all: [1, 0.1, 1, 1/3]
    rt = [1.0, 0.1, 1.0, 1 / 3]
    assert res.rewards["r_tool"].tolist() == pytest.approx(rt)
    m = sum(rt) / 4
    sd = math.sqrt(sum((x - m) ** 2 for x in rt) / 3)
    tool = [(x - m) / sd for x in rt]
    a = 0.45 / math.sqrt(0.27)
    acc = [-a, a, a, -a]
    expected = [x + 0.15 * y for x, y in zip(acc, tool)]
    assert res.channels[0].advantages.tolist() == pytest.approx(expected, abs=1e-5)
    assert tool[0] > 0  # the wrong no-tool rollout gets a positive efficiency part
    assert res.metrics["rho_Q"] == 1.0


@pytest.mark.parametrize(
    "name, params, key",
    [
        ("hdpo", {"alpha": 1.0}, "alpha"),
        ("grpo", {"w_tool": 0.1}, "w_tool"),
        ("hdpo", {"w_tool": -0.1}, "w_tool"),
        ("hdpo", {"eligible": "all"}, "eligible"),
        ("hdpo", {"tool_reward_shape": "cubic"}, "tool_reward_shape"),
        ("hdpo", {"eps": 0.0}, "eps"),
        ("hdpo", {"normalize_std": "yes"}, "normalize_std"),
        ("coupled", {"alpha": float("nan")}, "alpha"),
        ("coupled_penalty", {"lam": -1}, "lam"),
        ("tool_bonus", {"bonus_weight": True}, "bonus_weight"),
        ("nope", {}, "name"),
    ],
)
def test_bad_reward_configs(name, params, key):
    with pytest.raises(ValueError, match=key):
        RewardScheme(name, **params)


def test_estimator_called_directly_validates():
    with pytest.raises(ValueError, match="alpha"):
        REWARD_SCHEMES.get("hdpo")(DILEMMA, alpha=1.0)


def test_unknown_scheme_lists_known():
    with pytest.raises(ValueError, match="hdpo"):
        RewardScheme("hdp")


@pytest.mark.parametrize(
    "params, key",
    [
        ({"clip_low": 1.5}, "clip_low"),
        ({"clip_high": -0.1}, "clip_high"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"agg": "sum"}, "agg"),
        ({"kl_coef": -1.0}, "kl_coef"),
        ({"entropy_coef": "x"}, "entropy_coef"),
        ({"loss": "reinforce"}, "loss"),
        ({"foo": 1}, "foo"),
        ({"norm_len": 0}, "norm_len"),
    ],
)
def test_bad_objective_configs(params, key):
    with pytest.raises(ValueError, match=key):
        PolicyLoss(**params)


def test_describe():
    d = RewardScheme("hdpo", w_tool=0.1).describe()
    assert d == {
        "name": "hdpo", "w_acc": 1.0, "w_tool": 0.1, "eligible": "correct", "tool_reward_shape": "inverse",
        "beta": 0.5, "ans_weight": 0.9, "fmt_weight": 0.1, "normalize_std": True, "eps": 1e-6, "tool_term_nonzero_only": True,
    }


@pytest.mark.parametrize("path", sorted((CONF / "reward").glob("*.yaml")), ids=lambda p: p.stem)
def test_reward_configs_spell_out_every_param(path):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    scheme = instantiate(cfg)
    assert isinstance(scheme, RewardScheme) and scheme.name == path.stem
    raw = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    assert raw == scheme.describe()
    assert raw == RewardScheme(path.stem).describe()  # the YAML holds the defaults


def test_reward_config_set_complete():
    assert sorted(p.stem for p in (CONF / "reward").glob("*.yaml")) == REWARD_SCHEMES.names()


@pytest.mark.parametrize(
    "stem, clip_high, agg", [("ppo", 0.2, "token-mean"), ("dapo", 0.28, "token-mean"),
                             ("dr_grpo", 0.2, "seq-mean-token-sum-norm")]
)
def test_loss_configs(stem, clip_high, agg):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / "loss" / f"{stem}.yaml")
    obj = instantiate(cfg)
    assert isinstance(obj, PolicyLoss)
    d = obj.describe()
    assert d["clip_high"] == clip_high and d["agg"] == agg and d["dual_clip"] == 3.0
    assert d["clip_low"] == 0.2 and d["kl_coef"] == 0.0 and d["entropy_coef"] == 0.0
    raw = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"}
    assert raw == d


def test_hdpo_tool_term_averaging_switch():
    import torch

    from metis.rl.scheme import RewardScheme
    from metis.rl.types import RolloutScores

    scores = RolloutScores(r_ans=torch.tensor([1.0, 1.0, 0.0, 0.0]), r_fmt=torch.ones(4),
                           num_tool_calls=torch.tensor([0, 2, 1, 0]), group_ids=torch.zeros(4, dtype=torch.long))
    paper = RewardScheme("hdpo").compute(scores).channels[1]
    ablation = RewardScheme("hdpo", tool_term_nonzero_only=False).compute(scores).channels[1]
    assert paper.nonzero_only and not ablation.nonzero_only
    assert torch.equal(paper.advantages, ablation.advantages)
