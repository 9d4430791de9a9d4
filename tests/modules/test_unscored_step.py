"""An RL step with a failing judge: unscored rollouts get no advantage, are logged, and stop the run
above the threshold (a judge failure is never a wrong answer)."""

from __future__ import annotations

import json
import lightning as L
import pytest
import torch

from helpers import ANSWER, WRONG, CyclingEngine, FakeToolBox
from judge_server import VerdictServer

from metis.agent.loop import RolloutConfig
from metis.agent.scoring import Scorer, UnscoredStepError
from metis.data.prompts import PromptDataModule
from metis.data.synthetic import make_tasks
from metis.modules.rl import RLModule
from metis.io.judge import LLMJudge
from metis.rl.scheme import PolicyLoss, RewardScheme


def run(tiny_policy, tmp_path, max_unscored_frac):
    model, processor = tiny_policy
    model = type(model)(model.config)
    model.load_state_dict(tiny_policy[0].state_dict())
    tasks = make_tasks(2, seed=0, families=("arithmetic",), hard_fraction=0.0)
    for k, task in enumerate(tasks):
        task.answer, task.verifier, task.data_source = "42", "judge", f"src{k}"
        task.question = f"<image>Q{k}: what is 6 * 7?"
    server = VerdictServer(fail_on=("Q1:",))  # every check of the second prompt fails
    try:
        judge = LLMJudge(server.url, "judge-model", api_key_env=None, trust_env=False, backoff_s=0.01,
                         max_retries=1, timeout_s=10.0)
        module = RLModule(model, processor, CyclingEngine(processor, [[ANSWER], [WRONG]]), FakeToolBox(),
                            RewardScheme("hdpo"), PolicyLoss(), RolloutConfig(max_turns=2), group_size=4,
                            lr=1e-2, rollout_log_dir=str(tmp_path / "r"), grad_cosine_every=0,
                            scorer=Scorer(judge, max_unscored_frac=max_unscored_frac))
        dm = PromptDataModule(lambda: {"train": tasks, "val": []}, prompts_per_step=2)
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, num_sanity_val_steps=0)
        torch.manual_seed(0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        try:
            trainer.fit(module, datamodule=dm)
        finally:
            rows = [json.loads(x) for x in (tmp_path / "r" / "train.jsonl").read_text().splitlines()]
        changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
        return rows, {k: float(v) for k, v in trainer.callback_metrics.items()}, changed, server.url
    finally:
        server.close()


def test_unscored_group_gets_no_advantage_and_the_rest_trains(tiny_policy, tmp_path):
    rows, m, changed, _ = run(tiny_policy, tmp_path, max_unscored_frac=0.6)
    assert len(rows) == 8  # nothing is lost: unscored rollouts are written too
    unscored = [r for r in rows if not r["scored"]]
    assert len(unscored) == 4 and {r["data_source"] for r in unscored} == {"src1"}
    assert all(r["r_ans"] is None and not any(k.startswith("adv_") for k in r) for r in unscored)
    scored = [r for r in rows if r["scored"]]
    assert {r["data_source"] for r in scored} == {"src0"} and all("adv_acc" in r for r in scored)
    assert sorted(r["r_ans"] for r in scored) == [0.0, 0.0, 1.0, 1.0]
    assert m["reward/unscored"] == 4.0 and m["reward/judge_failures"] == 2.0  # two distinct answers of Q1
    assert m["train/accuracy"] == 0.5  # over the scored rollouts only, not 0.25
    assert m["train/source/src0/accuracy"] == 0.5 and "train/source/src1/accuracy" not in m
    assert m["train/source/src1/unscored"] == 4.0
    assert changed


def test_too_many_unscored_stops_the_run_naming_the_endpoint(tiny_policy, tmp_path):
    with pytest.raises(UnscoredStepError) as err:
        run(tiny_policy, tmp_path, max_unscored_frac=0.25)
    assert "127.0.0.1" in str(err.value) and "scoring.max_unscored_frac" in str(err.value)
    rows = [json.loads(x) for x in (tmp_path / "r" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and sum(not r["scored"] for r in rows) == 4
