"""Script for test_preemption: FSDP2 x 2 CPU processes; rank 1 alone gets SIGUSR1 in the middle
of RL step 2. Both ranks finish the step, save one checkpoint together and stop; a new fit resumes
from the newest complete checkpoint.

Usage: python preempt_run.py <out.json> <cache_dir> <run_dir>
Lightning's subprocess launcher re-runs this file for rank 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import lightning as L

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from helpers import ANSWER, CALL, WRONG, CyclingEngine, FakeToolBox  # noqa: E402

from metis.agent.loop import RolloutConfig  # noqa: E402
from metis.data.prompts import PromptDataModule  # noqa: E402
from metis.data.synthetic import make_tasks  # noqa: E402
from metis.models import build_policy  # noqa: E402
from metis.modules.rl import RLModule  # noqa: E402
from metis.rl.scheme import PolicyLoss, RewardScheme  # noqa: E402
from metis.utils.checkpoints import Preemption, latest_complete  # noqa: E402


class SignallingEngine(CyclingEngine):
    """Rank 1 signals itself while generating in RL step ``signal_step`` (1-based)."""

    module = None
    signal_step = 0

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        m = self.module
        if m.trainer.global_rank == 1 and m.rl_step + 1 == self.signal_step:
            self.signal_step = 0
            os.kill(os.getpid(), signal.SIGUSR1)
        return super().generate(trajs, max_new_tokens, stop_ids, greedy)


def fit(cache: str, run_dir: Path, max_steps: int, signal_step: int, ckpt_path: str | None):
    L.seed_everything(0)
    model, processor = build_policy(tiny={}, cache_dir=cache, dtype="float32", attn_implementation="sdpa")
    tasks = make_tasks(4, seed=0, families=("arithmetic",), hard_fraction=0.0)
    for t in tasks:
        t.answer = "42"
    engine = SignallingEngine(processor, [[CALL, ANSWER], [ANSWER], [WRONG]])
    module = RLModule(model, processor, engine, FakeToolBox(), RewardScheme("hdpo"), PolicyLoss(),
                        RolloutConfig(max_turns=3), group_size=2, lr=1e-3, rollout_log_dir=None)
    engine.module, engine.signal_step = module, signal_step
    from lightning.pytorch.strategies import ModelParallelStrategy

    preempt = Preemption(str(run_dir / "checkpoints"), requeue=False)
    trainer = L.Trainer(accelerator="cpu", devices=2, max_steps=max_steps, logger=False, enable_checkpointing=False,
                        strategy=ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                                       save_distributed_checkpoint=False, timeout=timedelta(minutes=10)),
                        callbacks=[preempt], enable_progress_bar=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False, default_root_dir=str(run_dir))
    dm = PromptDataModule(lambda: {"train": tasks, "val": []}, prompts_per_step=2, seed=0)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, preempt


def main(out: str, cache: str, run_dir: str) -> None:
    run_dir = Path(run_dir)
    trainer, module, preempt = fit(cache, run_dir, max_steps=4, signal_step=2, ckpt_path=None)
    first = {"rank": trainer.global_rank, "global_step": trainer.global_step, "rl_step": module.rl_step,
             "requested": preempt.requested, "saved": str(preempt.saved)}
    found = latest_complete(run_dir / "checkpoints")
    trainer, module, _ = fit(cache, run_dir, max_steps=3, signal_step=0, ckpt_path=str(found))
    second = {"global_step": trainer.global_step, "rl_step": module.rl_step}
    Path(f"{out}.rank{trainer.global_rank}").write_text(json.dumps({"first": first, "resumed": second,
                                                                     "found": str(found)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
