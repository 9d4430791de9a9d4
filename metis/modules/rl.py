"""The RL LightningModule: rollouts with the current policy, scores, advantages, PPO updates.

The module composes parts and holds no formula: rewards, advantages and the policy loss come
from :mod:`metis.rl` (the scheme and objective are picked by Hydra), rollouts from
:mod:`metis.agent`, tools from :mod:`metis.tools`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from metis.agent.batching import response_tensors
from metis.agent.logprobs import response_logprobs
from metis.agent.loop import AgentLoop, RolloutConfig
from metis.agent.metrics import engine_logprob_gap, rollout_metrics
from metis.core.task import Task
from metis.core.trajectory import Trajectory
from metis.modules.sharding import apply_fsdp2, export_policy, gathered, is_sharded
from metis.rl.rewards import format_reward
from metis.rl.types import AdvantageResult, RolloutScores
from metis.rl.verifiers import VERIFIERS
from metis.utils.metrics import flatten_numeric
from metis.utils.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)


class RLModule(L.LightningModule):
    """Online RL over multi-turn tool rollouts with any registered reward scheme.

    Args:
        group_size: rollouts per prompt (G).
        minibatch_size: rollouts per PPO update (``None``: the whole step is one update).
        ppo_epochs: passes over the step's rollouts (paper: 1).
        val_group_size: greedy rollouts per validation prompt.
        micro_batch_size: rollouts per forward/backward; gradients of a mini-batch's micro-batches
            add up exactly to the mini-batch gradient (see ``PolicyLoss.denominators``).
        rollout_log_dir: where each step's trajectories are appended as JSON lines (None: off).
        cpu_offload: with FSDP2, keep sharded parameters and optimizer state in CPU memory.
        optimizer: ``adamw`` or ``adamw8bit`` (bitsandbytes, 8-bit states).
        grad_cosine_every: every N RL steps, log the cosine between the gradients of the first two
            loss channels (HDPO: accuracy vs tool), at the cost of two extra backward passes.
    """

    def __init__(self, model, processor, engine, toolbox, scheme, objective, rollout: RolloutConfig,
                 group_size: int = 4, minibatch_size: int | None = None, ppo_epochs: int = 1,
                 micro_batch_size: int = 16, lr: float = 1e-6, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), grad_clip: float = 1.0, warmup_steps: int = 0,
                 rollout_log_dir: str | None = None, val_group_size: int = 1, grad_cosine_every: int = 0,
                 cpu_offload: bool = False, optimizer: str = "adamw") -> None:
        super().__init__()
        if group_size < 1 or ppo_epochs < 1:
            raise ValueError("module.group_size and module.ppo_epochs must be >= 1")
        self.model, self.processor = model, processor
        self.engine, self.toolbox, self.scheme, self.objective = engine, toolbox, scheme, objective
        self.engine.bind(model, processor)
        self.agent = AgentLoop(engine, toolbox, processor, rollout)
        self.group_size, self.minibatch_size, self.ppo_epochs = group_size, minibatch_size, ppo_epochs
        self.micro_batch_size = micro_batch_size
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.grad_clip, self.warmup_steps, self.val_group_size = grad_clip, warmup_steps, val_group_size
        self.grad_cosine_every, self.cpu_offload = grad_cosine_every, cpu_offload
        self.rollout_log_dir = Path(rollout_log_dir) if rollout_log_dir else None
        self.pad_id = processor.tokenizer.pad_token_id or 0
        if objective.kl_coef > 0 and not hasattr(model, "disable_adapter"):
            raise ValueError("loss.kl_coef > 0 needs a reference policy: use LoRA (model.lora=...), whose base "
                             "with the adapter disabled is the reference; the paper uses no KL term (kl_coef=0)")
        if optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"module.optimizer must be adamw or adamw8bit, got {optimizer!r}")
        self.optimizer_name = optimizer
        self.automatic_optimization = False
        self.rl_step = 0
        self.save_hyperparameters(ignore=["model", "processor", "engine", "toolbox", "scheme", "objective", "rollout"])
        self.hparams["rollout"] = dataclasses.asdict(rollout)  # plain types: weights-only loadable

    # ---- distribution ------------------------------------------------------------------------
    def configure_model(self) -> None:
        """FSDP2 when the trainer runs ``ModelParallelStrategy``; otherwise nothing to do."""
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None and not is_sharded(self.model):
            apply_fsdp2(self.model, mesh, param_dtype=next(self.model.parameters()).dtype,
                        cpu_offload=self.cpu_offload)

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "adamw8bit":
            import bitsandbytes as bnb  # optional extra: pip install -e '.[quant]'

            opt = bnb.optim.AdamW8bit(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        else:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        warmup = max(self.warmup_steps, 0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- scoring -----------------------------------------------------------------------------
    @staticmethod
    def score(trajs: list[Trajectory]) -> RolloutScores:
        r_ans = [VERIFIERS.get(t.task.verifier)(t.final_answer, t.task.answer) for t in trajs]
        return RolloutScores(
            r_ans=torch.tensor(r_ans, dtype=torch.float32),
            r_fmt=torch.tensor([format_reward(t.response_text) for t in trajs], dtype=torch.float32),
            num_tool_calls=torch.tensor([t.num_tool_calls for t in trajs], dtype=torch.long),
            group_ids=torch.tensor([t.group_id for t in trajs], dtype=torch.long),
        )

    def _logprobs(self, trajs: list[Trajectory], with_entropy: bool = False):
        """Log-probs in micro-batches, right-padded to the longest response of ``trajs``."""
        width = max(len(t.response_ids) for t in trajs)
        chunks, ents = [], []
        for start in range(0, len(trajs), self.micro_batch_size):
            lp, ent = response_logprobs(self.model, trajs[start:start + self.micro_batch_size], self.pad_id,
                                        with_entropy)
            chunks.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
            if ent is not None:
                ents.append(torch.nn.functional.pad(ent, (0, width - ent.shape[1])))
        return torch.cat(chunks), (torch.cat(ents) if ents else None)

    def _minibatch_loss(self, trajs, idx: list[int], old_logprobs, mask, result, backward: bool = True,
                        channels=None, record: torch.Tensor | None = None):
        """Forward/backward one PPO mini-batch in micro-batches; the gradients add up exactly.

        ``old_logprobs=None`` is the on-policy case (one epoch, one mini-batch): the behaviour
        policy is the current one, so its log-probs are this forward's, detached (ratio exactly
        1), and are written into ``record`` for the metrics."""
        if channels is not None:
            result = AdvantageResult(channels=channels, rewards=result.rewards, metrics=result.metrics)
        rows_all = torch.tensor(idx, dtype=torch.long)
        den = self.objective.denominators(mask[rows_all], result, rows_all)
        summed: dict[str, float] = {}
        for start in range(0, len(idx), self.micro_batch_size):
            rows = rows_all[start:start + self.micro_batch_size]
            sub = [trajs[i] for i in rows.tolist()]
            logp, entropy = response_logprobs(self.model, sub, self.pad_id,
                                              with_entropy=self.objective.entropy_coef > 0)
            width = logp.shape[1]
            ref = None
            if self.objective.kl_coef > 0:  # the LoRA base, adapter disabled, is the reference policy
                with torch.no_grad(), self.model.disable_adapter():
                    ref, _ = response_logprobs(self.model, sub, self.pad_id)
            if old_logprobs is None:
                old = logp.detach()
                if record is not None:
                    record[rows, :width] = old.float().cpu()
            else:
                old = old_logprobs[rows, :width].to(self.device)
            loss, metrics = self.objective(logp, old,
                                           mask[rows, :width], result, rollout_index=rows, entropy=entropy,
                                           denominators=den, ref_logprobs=ref)
            if backward:
                self.manual_backward(loss)
            for k, v in metrics.items():  # losses/token counts add up; ratios are averaged below
                summed[k] = summed.get(k, 0.0) + float(v) * (1.0 if k.startswith(("loss/", "tokens/")) else len(rows) / len(idx))
        return summed

    def _grad_cosine(self, trajs, idx, old_logprobs, mask, result) -> dict[str, float]:
        """Cosine between the gradients of the accuracy and the tool terms (the 'cancel' claim)."""
        if len(result.channels) < 2:
            return {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = []
        for ch in result.channels[:2]:
            for p in params:
                p.grad = None
            self._minibatch_loss(trajs, idx, old_logprobs, mask, result, channels=[ch])
            grads.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float()
                                    for p in params]))
        for p in params:
            p.grad = None
        a, b = grads
        denom = float(a.norm() * b.norm())
        names = f"{result.channels[0].name}_vs_{result.channels[1].name}"
        return {f"grad_cosine/{names}": float(a @ b) / denom if denom > 0 else 0.0}

    def _rollout_counters(self) -> dict[str, float]:
        """Cumulative counters of the agent loop (tool wait) and the engine (prefill, KV reuse)."""
        return {**getattr(self.engine, "stats", {}), **getattr(self.agent, "stats", {})}

    # ---- the RL step -------------------------------------------------------------------------
    def training_step(self, batch: list[Task], batch_idx: int) -> None:
        t0 = time.perf_counter()
        group_offset = (self.rl_step * self.trainer.world_size + self.trainer.global_rank) * len(batch)
        stats0 = self._rollout_counters()
        with gathered(self.model):
            trajs = self.agent.run(batch, n=self.group_size, group_offset=group_offset)
        self.engine.after_rollout()
        t_rollout = time.perf_counter() - t0
        counters = {k: v - stats0.get(k, 0) for k, v in self._rollout_counters().items()}
        if not trajs:  # every prompt of the batch was unusable (reported by the agent loop)
            log.warning("RL step %d: no rollouts (all %d prompts skipped); no update", self.rl_step + 1, len(batch))
            self.trainer.datamodule.step_done(batch)
            return
        scores = self.score(trajs)
        result = self.scheme.compute(scores)
        _, mask = response_tensors(trajs)
        mask = mask.to(self.device)
        cosine_now = bool(self.grad_cosine_every) and self.rl_step % self.grad_cosine_every == 0
        # one epoch over one mini-batch is on-policy: no separate old-log-prob pass
        on_policy = self.ppo_epochs == 1 and (self.minibatch_size or len(trajs)) >= len(trajs) and not cosine_now
        record = None
        if on_policy:
            old_logprobs = None
            record = torch.zeros(mask.shape, dtype=torch.float32)
        else:
            with torch.no_grad():
                old_logprobs, _ = self._logprobs(trajs)
        buffer = self.trainer.datamodule.buffer
        buffer.fill(trajs, mask=mask.cpu(), **({} if on_policy else {"old_logprobs": old_logprobs.cpu()}))
        t1 = time.perf_counter()
        opt, sched = self.optimizers(), self.lr_schedulers()
        out: dict[str, float] = {"on_policy": float(on_policy)}
        if cosine_now:
            out.update(self._grad_cosine(trajs, list(range(len(trajs))), old_logprobs, mask, result))
        updates: list[dict[str, float]] = []
        for _ in range(self.ppo_epochs):
            for idx in buffer.minibatches(self.minibatch_size or len(trajs)):
                opt.zero_grad(set_to_none=True)
                metrics = self._minibatch_loss(trajs, idx, old_logprobs, mask, result, record=record)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                metrics["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                opt.step()
                sched.step()
                updates.append(metrics)
        buffer.clear()
        self.engine.sync_weights(self.model)
        self.trainer.datamodule.step_done(batch)
        t_update = time.perf_counter() - t1
        self.rl_step += 1
        out.update(rollout_metrics(trajs, scores, result))
        out.update(engine_logprob_gap(trajs, record if on_policy else old_logprobs))
        out["skipped_prompts"] = float(len(self.agent.skipped))
        for key in updates[0]:
            out[key] = sum(m[key] for m in updates) / len(updates)
        out.update({"time/rollout_s": t_rollout, "time/update_s": t_update, "rl_step": float(self.rl_step),
                    "lr": sched.get_last_lr()[0]})
        out.update({f"rollout/{k}": float(v) for k, v in counters.items()})
        if "tool_wait_s" in counters and t_rollout > 0:
            out["rollout/tool_wait_frac"] = counters["tool_wait_s"] / t_rollout
        out.update(flatten_numeric(self.toolbox.metrics(), "tools/"))
        self.toolbox.reset_metrics()  # per-step tool statistics
        self.log_dict({f"train/{k}": v for k, v in out.items()}, on_step=True, batch_size=len(trajs))
        self.log("accuracy", out["accuracy"], prog_bar=True, on_step=True, logger=False, batch_size=len(trajs))
        self.log("tool_call_rate", out["tool_call_rate"], prog_bar=True, on_step=True, logger=False, batch_size=len(trajs))
        self._save_rollouts(trajs, scores, result, "train")

    # ---- validation --------------------------------------------------------------------------
    def validation_step(self, batch: list[Task], batch_idx: int) -> None:
        with gathered(self.model):
            trajs = self.agent.run(batch, n=self.val_group_size, greedy=True)
        scores = self.score(trajs)
        metrics = rollout_metrics(trajs, scores, None)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=len(trajs), sync_dist=True)
        self._save_rollouts(trajs, scores, None, "val")

    def _save_rollouts(self, trajs, scores: RolloutScores, result, split: str) -> None:
        if self.rollout_log_dir is None or self.trainer.global_rank != 0:
            return
        self.rollout_log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.rollout_log_dir / f"{split}.jsonl", "a") as fh:
            for i, t in enumerate(trajs):
                rec = t.summary() | {"rl_step": self.rl_step, "r_ans": float(scores.r_ans[i]),
                                     "r_fmt": float(scores.r_fmt[i])}
                if result is not None:
                    rec |= {f"adv_{c.name}": float(c.advantages[i]) for c in result.channels}
                fh.write(json.dumps(rec, default=str) + "\n")

    # ---- state -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["metis"] = {"rl_step": self.rl_step, "scheme": self.scheme.describe(), "rng": rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("metis", {})
        self.rl_step = state.get("rl_step", 0)
        if "rng" in state:  # sampling continues exactly where the interrupted run stood
            set_rng_state(state["rng"])

    def export_pretrained(self, path: Path) -> None:
        """Save the policy as a Hugging Face directory (usable as ``model.init_from``); LoRA is merged.

        Call on every rank: FSDP2 shards are gathered (a collective), rank 0 writes.
        """
        export_policy(self.model, self.processor, path, is_writer=self.trainer.global_rank == 0)

    def teardown(self, stage: str) -> None:
        self.toolbox.close()
