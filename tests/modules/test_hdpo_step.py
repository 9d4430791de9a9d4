"""One real HDPO training step: scripted rollouts with mixed correctness change the weights."""

from __future__ import annotations

import lightning as L
import torch

from helpers import ANSWER, CALL, WRONG, CyclingEngine, FakeToolBox

from metis.agent.loop import RolloutConfig
from metis.data.prompts import PromptDataModule
from metis.data.synthetic import make_tasks
from metis.modules.rl import RLModule
from metis.rl.scheme import PolicyLoss, RewardScheme


def run_step(tiny_policy, tmp_path, **module_kwargs):
    model, processor = tiny_policy
    model = type(model)(model.config)  # a private copy: the session fixture stays untouched
    model.load_state_dict(tiny_policy[0].state_dict())
    tasks = make_tasks(2, seed=0, families=("arithmetic",), hard_fraction=0.0)
    # answers: two correct with a tool, one correct directly, one wrong -> both channels active
    scripts = [[CALL, ANSWER], [ANSWER], [CALL, CALL, ANSWER], [WRONG]]
    for task in tasks:
        task.answer = "42"
    engine = CyclingEngine(processor, scripts)
    module = RLModule(model, processor, engine, FakeToolBox(), RewardScheme("hdpo"), PolicyLoss(),
                        RolloutConfig(max_turns=4), group_size=4, lr=1e-2, rollout_log_dir=str(tmp_path / "r"),
                        **module_kwargs)
    updates: list[dict[str, torch.Tensor]] = []  # the gradient of each PPO update, per parameter
    step = module._optimizer_step

    def capture(opt, counts_as_step):
        updates.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        step(opt, counts_as_step)

    module._optimizer_step = capture
    model.captured_updates = updates
    dm = PromptDataModule(lambda: {"train": tasks, "val": []}, prompts_per_step=2)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0)
    torch.manual_seed(0)
    trainer.fit(module, datamodule=dm)
    return model, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_one_training_step_changes_weights(tiny_policy, tmp_path):
    before = {k: v.clone() for k, v in tiny_policy[0].state_dict().items()}
    model, m = run_step(tiny_policy, tmp_path, grad_cosine_every=1)
    assert m["train/accuracy"] == 0.75 and m["train/tool_call_rate"] == 0.5
    assert m["train/mean_tool_calls"] == 0.75 and m["train/format_rate"] == 1.0
    # correct rollouts have T = 1, 0, 2 -> A_tool != 0 for all three; the wrong one gets none
    assert m["train/rho_Q"] == 0.75
    # the loop's own counters, per step (FakeToolBox answers at once, so only presence and range)
    assert m["train/rollout/tool_wait_s"] >= 0.0 and 0.0 <= m["train/rollout/tool_wait_frac"] <= 1.0
    assert m["train/loss/tool"] != 0.0 and m["train/loss/acc"] != 0.0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "an optimizer step with non-zero advantages must change the weights"
    assert (tmp_path / "r" / "train.jsonl").read_text().count("\n") == 8
    assert -1.0 <= m["train/grad_cosine/acc_vs_tool"] <= 1.0 and m["train/grad_cosine/acc_vs_tool"] != 0.0


def test_micro_batching_gives_the_same_update(tiny_policy, tmp_path):
    whole, m1 = run_step(tiny_policy, tmp_path / "a", micro_batch_tokens=10**6)
    micro, m2 = run_step(tiny_policy, tmp_path / "b", micro_batch_tokens=1)  # one rollout per micro-batch
    assert abs(m1["train/loss/total"] - m2["train/loss/total"]) < 1e-6
    # the gradients of the step (left on the parameters) agree; Adam's first step is ~lr*sign(g),
    # so weights are not a fair comparison for gradient entries at float-noise level
    assert len(whole.captured_updates) == len(micro.captured_updates) == 1
    ga, gb = whole.captured_updates[0], micro.captured_updates[0]
    assert ga.keys() == gb.keys() and len(ga) > 10
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-7, rtol=1e-4), name


def test_on_policy_step_skips_the_old_logprob_pass_and_gives_the_same_update(tiny_policy, tmp_path):
    """One epoch over one mini-batch: the update's own forward (detached) is the behaviour policy.
    Its first update equals that of the path with a separate no-grad old-log-prob pass (forced
    here by a second PPO epoch); Lightning's step counter advances once per RL step."""
    fast, m1 = run_step(tiny_policy, tmp_path / "a")
    slow, m2 = run_step(tiny_policy, tmp_path / "b", ppo_epochs=2)
    assert m1["train/on_policy"] == 1.0 and m2["train/on_policy"] == 0.0
    assert len(fast.captured_updates) == 1 and len(slow.captured_updates) == 2  # max_steps=1 is one RL step
    assert m1["train/loss/total"] != 0.0
    ga, gb = fast.captured_updates[0], slow.captured_updates[0]
    assert ga.keys() == gb.keys() and len(ga) > 10
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-7, rtol=1e-4), name
