"""Script for test_lockstep: one HDPO step with DIFFERENT data per rank (FSDP2 x 2, CPU, gloo),
or the single-process reference on the union of the data.

Usage: python lockstep_run.py <world_size> <out.json> <cache_dir> [mismatch|unscored]

Four prompts per step (the whole job's), two rollouts each. With two ranks:
* rank 0 gets a text-only prompt (no image anywhere: the vision tower runs on a dummy) and a
  prompt that cannot be encoded (skipped): fewer rollouts, fewer micro-batches;
* rank 1 gets two image prompts whose rollouts call the tool (image observations).
``mismatch``: rank 1 runs one extra forward on purpose; the run must fail (collective timeout),
not hang. ``unscored``: rank 1's image prompts are checked by a judge that goes down after start, so all of its
rollouts are unscored (over ``max_unscored_frac``) while rank 0's are scored: both ranks must stop
with errors (rank 1's names the endpoint), neither waiting in a collective. Collectives time out after 30 s once training starts (the rendezvous before it gets
10 minutes: a loaded test machine starts the second process slowly). Lightning's subprocess launcher re-runs this file for rank 1.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from helpers import ANSWER, CALL, WRONG, FakeToolBox, ScriptedEngine  # noqa: E402

from metis.agent.loop import RolloutConfig  # noqa: E402
from metis.data.prompts import PromptDataModule  # noqa: E402
from metis.data.sampler import ResumableSampler  # noqa: E402
from metis.core.task import Task  # noqa: E402
from metis.models import build_policy  # noqa: E402
from metis.modules.rl import RLModule  # noqa: E402
from metis.rl.scheme import PolicyLoss, RewardScheme  # noqa: E402

SEED = 0
SCRIPTS = {"text": [[ANSWER], [WRONG]], "skip": [[ANSWER], [ANSWER]],
           "image_a": [[CALL, ANSWER], [ANSWER]], "image_b": [[CALL, CALL, ANSWER], [WRONG]]}


class CollectiveTimeout(L.Callback):
    """Every process group's collective timeout set to ``seconds`` when training starts."""

    def __init__(self, seconds: float):
        self.timeout = timedelta(seconds=seconds)

    def on_train_start(self, trainer, pl_module):
        import torch.distributed as dist
        from torch.distributed.distributed_c10d import _set_pg_timeout, _world

        if dist.is_initialized():
            for group in list(_world.pg_map):
                _set_pg_timeout(self.timeout, group)


class TaskScriptedEngine(ScriptedEngine):
    """Script by (task, rollout index in its group): the same rollouts on any number of ranks."""

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        out = []
        for t in trajs:
            group = self.order.setdefault(t.task.id, [])
            if t.traj_id not in group:
                group.append(t.traj_id)
            turn = self.turn.get(t.traj_id, 0)
            self.turn[t.traj_id] = turn + 1
            text = self.scripts[t.task.id][group.index(t.traj_id)][turn]
            out.append(self.tok(text, add_special_tokens=False)["input_ids"][:max_new_tokens])
        return out


def tasks_in_stream_order() -> list[Task]:
    """Tasks placed so that the sampler's stream gives rank 0 (even positions) text + skip."""
    white = Image.new("RGB", (64, 64), "white")
    by_id = {"text": Task(id="text", question="What is 6 * 7?", images=[], answer="42", verifier="numeric"),
             "skip": Task(id="skip", question="<image><image>Two placeholders, one image", images=[white],
                          answer="42", verifier="numeric"),
             "image_a": Task(id="image_a", question="<image>What is 6 * 7?", images=[white], answer="42",
                             verifier="numeric"),
             "image_b": Task(id="image_b", question="<image>And 7 * 6?", images=[white], answer="42",
                             verifier="numeric")}
    wanted = ["text", "image_a", "skip", "image_b"]  # stream positions 0..3; rank = position % 2
    perm = ResumableSampler(4, SEED)._permutation(0)
    tasks: list[Task | None] = [None] * 4
    for position, index in enumerate(perm):
        tasks[index] = by_id[wanted[position]]
    return tasks


def down_judge_scorer():
    """A Scorer whose judge answers the start-up probe, then goes down (HTTP 503 on every check)."""
    from judge_server import VerdictServer

    from metis.agent.scoring import Scorer
    from metis.io.judge import LLMJudge

    server = VerdictServer()
    judge = LLMJudge(server.url, "judge-model", api_key_env=None, trust_env=False, backoff_s=0.01,
                     max_retries=1, timeout_s=5.0)
    scorer = Scorer(judge, max_unscored_frac=0.25)
    server.down = True
    return scorer


def main(world: int, out: str, cache: str, mode: str = "") -> None:
    L.seed_everything(0)
    mismatch = mode == "mismatch"
    model, processor = build_policy(tiny={}, cache_dir=cache, dtype="float32", attn_implementation="sdpa")
    module = RLModule(model, processor, TaskScriptedEngine(processor, SCRIPTS), FakeToolBox(),
                        RewardScheme("hdpo"), PolicyLoss(), RolloutConfig(max_turns=4), group_size=2, lr=1e-3,
                        micro_batch_tokens=400, rollout_log_dir=None,
                        scorer=down_judge_scorer() if mode == "unscored" else None)
    updates: list[dict[str, float]] = []
    step = module._optimizer_step

    def capture(opt, counts_as_step):  # every rank, same order (full_tensor is a collective)
        grads = {}
        for name, p in module.model.named_parameters():
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            grads[name] = [float(g.double().sum()), float(g.double().abs().sum())]
        updates.append(grads)
        step(opt, counts_as_step)

    module._optimizer_step = capture
    if mismatch:
        forward = module._forward

        def extra_forward_on_rank_1(trajs, rows, with_entropy=False):
            if module.trainer.global_rank == 1:
                forward(trajs, [])  # a forward the other rank does not run
            return forward(trajs, rows, with_entropy)

        module._forward = extra_forward_on_rank_1
    tasks = tasks_in_stream_order()
    if mode == "unscored":
        for task in tasks:
            if task.id.startswith("image"):
                task.verifier = "judge"
    dm = PromptDataModule(lambda: {"train": tasks, "val": []}, prompts_per_step=4, seed=SEED)
    strategy = "auto"
    if world > 1:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(data_parallel_size=world, tensor_parallel_size=1,
                                         save_distributed_checkpoint=False, timeout=timedelta(minutes=10))
    trainer = L.Trainer(accelerator="cpu", devices=world, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                        use_distributed_sampler=False, callbacks=[CollectiveTimeout(30)])
    t0 = time.monotonic()
    trainer.fit(module, datamodule=dm)
    if trainer.global_rank == 0:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        Path(out).write_text(json.dumps({"metrics": metrics, "updates": updates, "fit_s": time.monotonic() - t0,
                                         "skipped": module.agent.skipped}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
