"""The progress bar counts RL steps of max_steps; the end-of-run summary prints each number once,
before -> after where a step-0 validation ran, and SFT losses."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from metis.dashboard.callbacks import VAL_KEYS, pooled_means, pooled_sums
from metis.utils.progress import StepProgressBar, optimizer_steps_per_rl_step, total_rl_steps
from metis.utils.summary import dashboard_command, metric_lines


def test_optimizer_steps_per_rl_step():
    assert optimizer_steps_per_rl_step(1, 16, None) == 1
    assert optimizer_steps_per_rl_step(1, 16, 8) == 2        # hdpo_8b: two mini-batches per RL step
    assert optimizer_steps_per_rl_step(2, 10, 4) == 6
    assert total_rl_steps(4, 1) == 4 and total_rl_steps(300, 2) == 150 and total_rl_steps(5, 2) == 3


def _bar_counts(global_step, rl_step, max_steps=8, minibatch=None):
    trainer = SimpleNamespace(max_steps=max_steps, global_step=global_step,
                              datamodule=SimpleNamespace(prompts_per_step=4))
    module = SimpleNamespace(rl_step=rl_step, group_size=4, ppo_epochs=1, minibatch_size=minibatch)
    return StepProgressBar()._counts(trainer, module)


def test_bar_counts_rl_steps_not_the_endless_prompt_stream():
    assert _bar_counts(0, 0) == (0, 8, "RL step")
    assert _bar_counts(0, 0, minibatch=8) == (0, 4, "RL step")   # estimated before the first step
    assert _bar_counts(6, 3, minibatch=8) == (3, 4, "RL step")   # measured after it
    sft = StepProgressBar()._counts(SimpleNamespace(max_steps=100, global_step=40), SimpleNamespace())
    assert sft == (40, 100, "step")


def test_summary_prints_each_metric_once_with_before_and_after(tmp_path):
    metrics = {"accuracy": 0.5, "tool_rate": 1.0, "train/accuracy": 0.5, "train/rl_step": 24.0,
               "train/tool_call_rate": 0.6, "val/accuracy": 0.97, "val/unnecessary_tool_rate": 0.03,
               "val/accuracy_tool_needed": 1.0}
    before = {"val/accuracy": 0.95, "val/unnecessary_tool_rate": 1.0, "val/accuracy_tool_needed": 1.0}
    lines = metric_lines(metrics, before, rl_step=24)
    text = "\n".join(lines)
    assert "before -> after 24 RL steps" in lines[0]
    assert "val unnecessary tools" in text and "1.0000 -> 0.0300" in text
    assert "0.9500 -> 0.9700" in text
    labels = [line.split(":")[0].strip() for line in lines[1:]]
    assert len(labels) == len(set(labels)) == 5   # the prog-bar copy `accuracy` is not printed again
    assert not any(line.strip().startswith("accuracy ") for line in lines)


def test_sft_summary_shows_the_losses():
    lines = metric_lines({"train/loss": 0.21, "val/loss": 0.25, "train/tokens_per_s": 900.0})
    assert [line.split(":")[0].strip() for line in lines] == ["train loss", "val loss"]


def test_dashboard_command_names_the_run(tmp_path):
    cmd = dashboard_command(tmp_path / "my run")
    assert cmd.startswith("python -m metis.dashboard ") and f"'{tmp_path / 'my run'}'" in cmd


def test_step0_validation_pools_like_lightning():
    # two batches: the rollout-weighted mean over the batches that logged each key
    sums = pooled_sums([({"accuracy": 1.0, "accuracy_tool_needed": 1.0}, 4), ({"accuracy": 0.0}, 12)])
    assert sums.shape == (2, len(VAL_KEYS))
    means = pooled_means(sums + sums)   # another rank's identical shard: the same means
    assert means["accuracy"] == 0.25 and means["accuracy_tool_needed"] == 1.0 and "tool_call_rate" not in means
    assert isinstance(sums, torch.Tensor)


def test_sampled_trend_first_and_last_steps_replace_the_last_step_values():
    from metis.dashboard.callbacks import SampledTrend
    from metis.utils.summary import trend_lines

    cb = SampledTrend(window=2)
    module = SimpleNamespace(rl_step=0)
    rates = [0.9, 0.8, 0.7, 0.5, 0.3]
    for k, rate in enumerate(rates):
        trainer = SimpleNamespace(callback_metrics={"train/unnecessary_tool_rate": torch.tensor(rate),
                                                    "train/accuracy": torch.tensor(0.75)})
        cb.on_train_batch_end(trainer, module, None, None, k)
    label, first, last = cb.trend()
    assert label == "RL steps 1-2 -> 4-5"
    assert abs(first["train/unnecessary_tool_rate"] - 0.85) < 1e-6 and abs(last["train/unnecessary_tool_rate"] - 0.4) < 1e-6
    lines = trend_lines(label, first, last)
    assert "sampled rollouts, mean over RL steps 1-2 -> 4-5" in lines[0]
    assert any("sampled unneeded calls" in l and "0.8500 -> 0.4000" in l for l in lines)
    # the last-step copies of the same keys are not printed again
    metrics = {"train/rl_step": 5.0, "train/unnecessary_tool_rate": 0.3, "train/accuracy": 0.75, "train/rho_Q": 0.2}
    text = "\n".join(metric_lines(metrics, skip=frozenset(first)))
    assert "train unnecessary tools" not in text and "train accuracy" not in text and "train rho_Q" in text
    assert SampledTrend(window=8).trend() is None  # nothing logged yet
