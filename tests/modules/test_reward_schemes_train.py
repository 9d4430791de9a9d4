"""Every reward scheme of conf/reward runs a real HDPO-module training step, chosen by one Hydra key."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from helpers import ANSWER, CALL, CONF, WRONG, CyclingEngine, FakeToolBox, compose_cfg
from hydra.utils import instantiate

from metis.agent.loop import RolloutConfig
from metis.data.prompts import PromptDataModule
from metis.data.synthetic import make_tasks
from metis.modules.rl import RLModule

SCHEMES = sorted(p.stem for p in (CONF / "reward").glob("*.yaml"))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_trains_one_step(scheme, tiny_policy):
    cfg = compose_cfg(f"reward={scheme}", return_hydra_config=False)
    reward, objective = instantiate(cfg.reward), instantiate(cfg.loss)
    assert reward.describe()["name"] == scheme
    model = type(tiny_policy[0])(tiny_policy[0].config)
    model.load_state_dict(tiny_policy[0].state_dict())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    processor = tiny_policy[1]
    tasks = make_tasks(1, seed=0, families=("arithmetic",), hard_fraction=0.0)
    tasks[0].answer = "42"
    engine = CyclingEngine(processor, [[CALL, ANSWER], [ANSWER], [CALL, CALL, ANSWER], [WRONG]])
    module = RLModule(model, processor, engine, FakeToolBox(), reward, objective, RolloutConfig(max_turns=4),
                        group_size=4, lr=1e-2, rollout_log_dir=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=PromptDataModule(lambda: {"train": tasks, "val": []}, prompts_per_step=1))
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert math.isfinite(m["train/loss/total"])
    # a mixed group (3 right, 1 wrong) gives every scheme a non-zero advantage somewhere
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    if scheme == "hdpo":
        assert m["train/rho_Q"] == 0.75 and "train/loss/tool" in m
    if scheme == "grpo":
        assert m["train/rho_Q"] == 0.0 and "train/loss/tool" not in m
