"""Script for test_fsdp2: one HDPO step on scripted rollouts, single process or FSDP2 x 2 (CPU, gloo).

Usage: python fsdp_parity_run.py <world_size> <out.json> <cache_dir>
Lightning's subprocess launcher re-runs this file for rank 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from helpers import ANSWER, CALL, WRONG, CyclingEngine, FakeToolBox  # noqa: E402

from metis.agent.loop import RolloutConfig  # noqa: E402
from metis.data.prompts import PromptDataModule  # noqa: E402
from metis.data.synthetic import make_tasks  # noqa: E402
from metis.models import build_policy  # noqa: E402
from metis.modules.rl import RLModule  # noqa: E402
from metis.rl.scheme import PolicyLoss, RewardScheme  # noqa: E402


def main(world: int, out: str, cache: str) -> None:
    L.seed_everything(0)
    model, processor = build_policy(tiny={}, cache_dir=cache)
    # two copies of one task: each rank gets one (tests/modules/test_lockstep.py has ranks with
    # different data)
    task = make_tasks(1, seed=0, families=("arithmetic",), hard_fraction=0.0)[0]
    task.answer = "42"
    tasks = [task, task]
    engine = CyclingEngine(processor, [[CALL, ANSWER], [ANSWER], [CALL, CALL, ANSWER], [WRONG]])
    module = RLModule(model, processor, engine, FakeToolBox(), RewardScheme("hdpo"), PolicyLoss(),
                        RolloutConfig(max_turns=4), group_size=4, lr=1e-3, rollout_log_dir=None)
    dm = PromptDataModule(lambda: {"train": tasks, "val": []}, prompts_per_step=2, seed=0)
    strategy = "auto"
    if world > 1:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1,
                                         save_distributed_checkpoint=False)
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    module.export_pretrained(Path(out).with_suffix(f".hf{world}"))  # every rank; gathers FSDP2 shards
    weights = {}
    for name, value in module.model.state_dict().items():
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        weights[name] = full.detach().double().sum().item()
    if trainer.global_rank == 0:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        Path(out).write_text(json.dumps({"metrics": metrics, "weights": weights,
                                         "sharded": type(module.model).__name__}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
