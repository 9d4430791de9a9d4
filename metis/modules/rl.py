"""The RL LightningModule: rollouts with the current policy, scores, advantages, PPO updates.

The module composes parts and holds no formula: rewards, advantages and the policy loss come
from :mod:`metis.rl` (the scheme and objective are picked by Hydra), rollouts from
:mod:`metis.agent`, tools from :mod:`metis.tools`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from metis.agent.batching import response_tensors, token_budget_batches
from metis.agent.importance import apply_tis
from metis.agent.logprobs import dummy_trajectory, response_logprobs, supports_shared_prompt
from metis.agent.loop import AgentLoop, RolloutConfig
from metis.agent.metrics import (engine_logprob_gap, rollout_counter_metrics, rollout_metrics, rollout_records,
                                 source_metrics, update_means)
from metis.agent.scoring import ScoredBatch, Scorer, scheme_over_kept, subset_scores
from metis.core.task import Task
from metis.core.trajectory import Trajectory
from metis.io.jsonl import JsonlLog
from metis.modules.sharding import (apply_fsdp2, compute_dtype, export_policy, gathered, is_sharded, local_part,
                                    split_gradient_dots)
from metis.rl.types import AdvantageResult, RolloutScores
from metis.utils.metrics import flatten_numeric
from metis.utils.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)


class RLModule(L.LightningModule):
    """Online RL over multi-turn tool rollouts with any registered reward scheme.

    Args:
        group_size: rollouts per prompt (G).
        minibatch_prompts: prompts per PPO update, counted over the whole job like
            ``data.prompts_per_step`` (``None``: the whole step is one update); each rank updates on
            its ``minibatch_prompts / world_size`` prompts with all their rollouts.
        ppo_epochs: passes over the step's rollouts (paper: 1).
        val_group_size: greedy rollouts per validation prompt.
        micro_batch_tokens: padded tokens per forward/backward (rows x longest row); gradients of a
            mini-batch's micro-batches add up exactly to the mini-batch gradient, and the loss is
            the token mean over the whole job's mini-batch (``PolicyLoss.denominators`` summed
            over ranks).
        logprob_chunk_tokens: positions per chunk of the LM head + float32 log-softmax (memory).
        rollout_log_dir: where each step's trajectories are appended as JSON lines (None: off).
        cpu_offload: with FSDP2, keep sharded parameters and optimizer state in CPU memory.
        optimizer: ``adamw`` or ``adamw8bit`` (bitsandbytes, 8-bit states).
        grad_cosine_every: every N RL steps, log the cosine between the gradients of the first two
            loss channels (HDPO: accuracy vs tool), at the cost of one extra forward/backward of the
            step's first mini-batch (0: off).
        scorer: answer checking (:class:`metis.agent.scoring.Scorer`: verifiers, the LLM judge, the
            unscored-rollout policy); None: the deterministic verifiers only.

    ``trainer.max_steps`` counts RL steps: Lightning's step counter advances once per RL step,
    whatever the number of PPO updates in it. Under FSDP every rank runs the same sequence of
    forwards (collectives) whatever its data: see :meth:`_update`.
    """

    def __init__(self, model, processor, engine, toolbox, scheme, objective, rollout: RolloutConfig,
                 group_size: int = 4, minibatch_prompts: int | None = None, ppo_epochs: int = 1,
                 micro_batch_tokens: int = 16384, logprob_chunk_tokens: int = 1024, lr: float = 1e-6, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), grad_clip: float = 1.0, warmup_steps: int = 0,
                 rollout_log_dir: str | None = None, val_group_size: int = 1, grad_cosine_every: int = 0,
                 cpu_offload: bool = False, optimizer: str = "adamw", scorer: Scorer | None = None) -> None:
        super().__init__()
        if group_size < 1 or ppo_epochs < 1:
            raise ValueError("module.group_size and module.ppo_epochs must be >= 1")
        self.model, self.processor = model, processor
        self.engine, self.toolbox, self.scheme, self.objective = engine, toolbox, scheme, objective
        self.scorer = scorer if scorer is not None else Scorer()
        self.engine.bind(model, processor)
        self.agent = AgentLoop(engine, toolbox, processor, rollout)
        if micro_batch_tokens < 1 or logprob_chunk_tokens < 1:
            raise ValueError("module.micro_batch_tokens and module.logprob_chunk_tokens must be >= 1")
        if minibatch_prompts is not None and minibatch_prompts < 1:
            raise ValueError(f"module.minibatch_prompts must be >= 1 or null, got {minibatch_prompts}")
        self.group_size, self.minibatch_prompts, self.ppo_epochs = group_size, minibatch_prompts, ppo_epochs
        self.micro_batch_tokens, self.logprob_chunk_tokens = micro_batch_tokens, logprob_chunk_tokens
        self.prompts_per_rank = self.minibatch_per_rank = 0  # set for the world size in on_fit_start
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.grad_clip, self.warmup_steps, self.val_group_size = grad_clip, warmup_steps, val_group_size
        self.grad_cosine_every, self.cpu_offload = grad_cosine_every, cpu_offload
        self.rollout_log_dir = Path(rollout_log_dir) if rollout_log_dir else None
        self.pad_id = processor.tokenizer.pad_token_id or 0
        self.shared_prompt = supports_shared_prompt(model)  # a property of the model: the same on every rank
        if objective.kl_coef > 0 and not hasattr(model, "disable_adapter"):
            raise ValueError("loss.kl_coef > 0 needs a reference policy: use LoRA (model.lora=...), whose base "
                             "with the adapter disabled is the reference; the paper uses no KL term (kl_coef=0)")
        if optimizer not in ("adamw", "adamw8bit"):
            raise ValueError(f"module.optimizer must be adamw or adamw8bit, got {optimizer!r}")
        self.optimizer_name = optimizer
        self.automatic_optimization = False
        self.rl_step = 0
        self.save_hyperparameters(ignore=["model", "processor", "engine", "toolbox", "scheme", "objective", "rollout",
                                          "scorer"])
        self.hparams["rollout"] = dataclasses.asdict(rollout)  # plain types: weights-only loadable

    # ---- distribution ------------------------------------------------------------------------
    def configure_model(self) -> None:
        """FSDP2 when the trainer runs ``ModelParallelStrategy``; otherwise nothing to do."""
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None and not is_sharded(self.model):
            apply_fsdp2(self.model, mesh, param_dtype=compute_dtype(self.trainer.precision, self.model),
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
        """Deterministic verifiers only (no judge); the training step uses ``self.scorer``."""
        return Scorer().score(trajs).scores

    # ---- batch shares and agreement between ranks -------------------------------------------
    def on_fit_start(self) -> None:
        self._set_batch_shares()
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError("trainer.precision=16-mixed (loss scaling) is not supported by the RL module: "
                             "use bf16-mixed (fp32 weights, bf16 compute) or 32-true")

    def _set_batch_shares(self) -> None:
        """Per-rank shares of the job's batch; one error naming every key that does not split evenly."""
        world = self.trainer.world_size
        total = getattr(self.trainer.datamodule, "prompts_per_step", None)
        if total is None:
            raise ValueError("the RL module needs a datamodule with prompts_per_step (metis.data.prompts.PromptDataModule)")
        mini = self.minibatch_prompts or total
        bad = [f"data.prompts_per_step={total} by the world size {world}"] if total % world else []
        bad += [f"data.prompts_per_step={total} by module.minibatch_prompts={mini}"] if total % mini else []
        bad += [f"module.minibatch_prompts={mini} by the world size {world}"] if mini % world else []
        if bad:
            raise ValueError("batch sizes count prompts of the whole job (world size = trainer.devices x "
                             "trainer.num_nodes) and must split evenly; cannot divide " + "; ".join(bad))
        self.prompts_per_rank, self.minibatch_per_rank = total // world, mini // world
        rollouts = self.prompts_per_rank * self.group_size  # what one rank runs at once
        if self.agent.config.tool_workers > rollouts:
            log.info("rollout.loop.tool_workers %d > %d rollouts per rank: capped", self.agent.config.tool_workers,
                     rollouts)
            self.agent.config = dataclasses.replace(self.agent.config, tool_workers=rollouts)

    def _all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Sum (or max) of ``values`` over ranks: how ranks agree on counts and decisions."""
        if self.trainer.world_size == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.tolist()

    # ---- log-probs and losses ----------------------------------------------------------------
    def _forward(self, trajs: list[Trajectory], rows: list[int], with_entropy: bool = False):
        """Log-probs (and entropies) of ``rows``; ``rows=[]`` runs a zero-weight dummy micro-batch.

        The way (shared-prompt or plain) depends on the model only; with several ranks every
        forward runs the vision tower. So every rank runs the same forwards, hence the same
        FSDP collectives, whatever its data."""
        sub = [trajs[i] for i in rows] or [dummy_trajectory(self.model, self.pad_id)]
        return response_logprobs(self.model, sub, self.pad_id, with_entropy, shared_prompt=self.shared_prompt,
                                 chunk_tokens=self.logprob_chunk_tokens, vision_always=self.trainer.world_size > 1)

    def _plan(self, trajs: list[Trajectory], rows: list[int]) -> list[list[int]]:
        """Micro-batches of ``rows`` within the token budget, padded with empty ones (dummies) to
        the count of the rank that has the most."""
        lengths = [len(trajs[i].input_ids) for i in rows]
        batches = [[rows[j] for j in b] for b in token_budget_batches(lengths, self.micro_batch_tokens)]
        most = int(self._all_reduce([len(batches)], "max")[0])
        return batches + [[] for _ in range(most - len(batches))]

    def _logprobs(self, trajs: list[Trajectory], width: int) -> torch.Tensor:
        """Old log-probs ``[N, width]`` (no gradient) of every rollout, in micro-batches."""
        out = torch.zeros(len(trajs), width)
        with torch.no_grad():
            for rows in self._plan(trajs, list(range(len(trajs)))):
                lp, _ = self._forward(trajs, rows)
                if rows:
                    out[rows, :lp.shape[1]] = lp.float().cpu()
        return out

    def _global_denominators(self, mask, result, rows: torch.Tensor, n_channels: int) -> dict[str, float] | None:
        """Per-channel token (or sequence) counts of the whole job's mini-batch: the loss is the
        token mean over all ranks' rollouts, not a mean of per-rank means."""
        local = [0.0] * n_channels
        if result is not None and len(rows):
            den = self.objective.denominators(mask[rows], result, rows)
            local = [den[ch.name] for ch in result.channels]
        total = self._all_reduce(local)
        return None if result is None else {ch.name: v for ch, v in zip(result.channels, total)}

    def _minibatch_loss(self, trajs, idx: list[int], old_logprobs, mask, result, n_channels: int,
                        channels: slice | None = None, record: torch.Tensor | None = None) -> dict[str, float]:
        """Forward/backward one PPO mini-batch in micro-batches; the gradients add up exactly.

        ``old_logprobs=None`` is the on-policy case (one epoch, one mini-batch): the behaviour
        policy is the current one, so its log-probs are this forward's, detached (ratio exactly
        1), and are written into ``record`` for the metrics. ``channels`` keeps some loss channels
        only (the gradient-cosine diagnostic). The losses are scaled by the world size: FSDP
        averages gradients over ranks, and each rank's loss already is its share of the job's mean."""
        if channels is not None:
            n_channels = len(range(n_channels)[channels])
            if result is not None:
                result = AdvantageResult(channels=result.channels[channels], rewards=result.rewards,
                                         metrics=result.metrics)
        rows_all = torch.tensor(idx, dtype=torch.long)
        den = self._global_denominators(mask, result, rows_all, n_channels)
        scale = float(self.trainer.world_size)
        summed: dict[str, float] = {}
        for micro in self._plan(trajs, idx):
            if not micro:  # this rank has fewer micro-batches than another: join its collectives
                logp, _ = self._forward(trajs, [])
                self.manual_backward(0.0 * logp.sum())
                continue
            rows = torch.tensor(micro, dtype=torch.long)
            logp, entropy = self._forward(trajs, micro, with_entropy=self.objective.entropy_coef > 0)
            width = logp.shape[1]
            ref = None
            if self.objective.kl_coef > 0:  # the LoRA base, adapter disabled, is the reference policy
                with torch.no_grad(), self.model.disable_adapter():
                    ref, _ = self._forward(trajs, micro)
            if old_logprobs is None:
                old = logp.detach()
                if record is not None:
                    record[rows, :width] = old.float().cpu()
            else:
                old = old_logprobs[rows, :width].to(self.device)
            # engine/trainer log-prob gap: truncated importance weights on the gradient (metis.agent.importance)
            logp, tis = apply_tis(logp, old, [trajs[i] for i in micro], mask[rows, :width],
                                  getattr(self.engine, "tis_cap", None))
            loss, metrics = self.objective(logp, old, mask[rows, :width], result, rollout_index=rows,
                                           entropy=entropy, denominators=den, ref_logprobs=ref)
            metrics = {**metrics, **tis}
            self.manual_backward(loss * scale)
            for k, v in metrics.items():  # losses/token counts add up; ratios are averaged below
                summed[k] = summed.get(k, 0.0) + float(v) * (1.0 if k.startswith(("loss/", "tokens/")) else len(rows) / len(idx))
        # losses and token counts of the whole job's mini-batch (other metrics stay this rank's)
        keys = None if result is None else [f"{kind}/{ch.name}" for kind in ("loss", "tokens")
                                            for ch in result.channels] + ["loss/total"]
        total = self._all_reduce([summed.get(k, 0.0) for k in keys] if keys else [0.0] * (2 * n_channels + 1))
        if keys:
            summed.update(zip(keys, total))
        return summed

    def _grad_cosine(self, first: list[torch.Tensor | None], weights: tuple[float, float], names: str) -> dict[str, float]:
        """cos(grad L_a, grad L_b) from this rank's gradient shards: ``first`` holds w_a * grad L_a
        (kept from a pass with the first channel only), the parameters' gradients now hold the
        whole loss's, so w_b * grad L_b is their difference. Three local dot products, one all-reduce."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        dots = split_gradient_dots(first, [local_part(p.grad) for p in params])
        ab, aa, bb = self._all_reduce(dots) if is_sharded(self.model) else dots
        sign = (1.0 if weights[0] >= 0 else -1.0) * (1.0 if weights[1] >= 0 else -1.0)
        denom = (aa * bb) ** 0.5
        return {f"grad_cosine/{names}": sign * ab / denom if denom > 0 else 0.0}

    def _optimizer_step(self, opt, counts_as_step: bool) -> None:
        """One PPO update. ``trainer.max_steps`` (and checkpoint cadence) count RL steps: only the
        step's last update goes through Lightning's optimizer wrapper, which advances its step
        counter; earlier ones step the wrapped optimizer directly (the same update: bf16 and fp32
        precisions have no loss scaler, see on_fit_start)."""
        if counts_as_step:
            opt.step()
        else:
            opt.optimizer.step()

    def _update(self, trajs, prompt_of, old_logprobs, mask, result, record, cosine_now: bool) -> list[dict[str, float]]:
        """The step's PPO updates: the same number of updates, micro-batches and forwards on every rank."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        buffer = self.trainer.datamodule.buffer
        n_channels = int(self._all_reduce([len(result.channels) if result is not None else 0], "max")[0])
        per_epoch = -(-self.prompts_per_rank // self.minibatch_per_rank)
        updates: list[dict[str, float]] = []
        for epoch in range(self.ppo_epochs):
            minibatches = buffer.minibatches(prompt_of, self.prompts_per_rank, self.minibatch_per_rank)
            for k, idx in enumerate(minibatches):
                opt.zero_grad(set_to_none=True)
                if cosine_now and not updates and n_channels >= 2:
                    self._minibatch_loss(trajs, idx, old_logprobs, mask, result, n_channels, channels=slice(0, 1))
                    params = [p for p in self.model.parameters() if p.requires_grad]
                    first = [None if p.grad is None else local_part(p.grad).detach().clone() for p in params]
                    opt.zero_grad(set_to_none=True)
                metrics = self._minibatch_loss(trajs, idx, old_logprobs, mask, result, n_channels, record=record)
                if cosine_now and not updates and n_channels >= 2:
                    chans = result.channels[:2] if result is not None else None
                    weights = (chans[0].weight, chans[1].weight) if chans else (1.0, 1.0)
                    names = f"{chans[0].name}_vs_{chans[1].name}" if chans else "first_vs_second"
                    metrics.update(self._grad_cosine(first, weights, names))
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                metrics["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                self._optimizer_step(opt, counts_as_step=epoch == self.ppo_epochs - 1 and k == per_epoch - 1)
                sched.step()
                updates.append(metrics)
        return updates

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
        if not self._all_reduce([float(bool(trajs))], "max")[0]:  # agreed: no rank has a rollout
            log.warning("RL step %d: no rollouts on any rank (all prompts skipped); no update", self.rl_step + 1)
            self.trainer.datamodule.step_done(batch)
            return
        checked = result = kept_result = None
        keep: list[int] = []
        mask = torch.zeros(0, 1)
        over = False
        if trajs:  # a rank whose prompts were all skipped still joins every collective of the update
            checked = self.scorer.score(trajs)
            keep = self.scorer.update_indices(checked)  # unscored rollouts get no advantage
            if checked.num_unscored:
                log.warning("RL step %d: %d rollouts unscored (judge failures); %d of %d take part in the update",
                            self.rl_step + 1, checked.num_unscored, len(keep), len(trajs))
            over = checked.num_unscored / len(trajs) > self.scorer.max_unscored_frac
            # the scheme runs over the kept rollouts; the others keep their rows (every rank runs the same
            # forward/backward passes under FSDP) with zero advantages and no loss tokens
            result, kept_result = scheme_over_kept(self.scheme, checked, keep)
            _, mask = response_tensors(trajs)
            dropped = sorted(set(range(len(trajs))) - set(keep))
            if dropped:
                mask[dropped] = 0
        if self._all_reduce([float(over)], "max")[0]:  # every rank stops, none waits in a collective
            if trajs:
                self._save_rollouts(trajs, checked, None, [], "train")
            if over:
                self.scorer.check_unscored(checked)  # raises, naming the endpoint
            raise RuntimeError("another rank stopped the run: too many unscored rollouts (its error names the "
                               "judge endpoint)")
        mask = mask.to(self.device)
        prompt_of = [t.group_id - group_offset for t in trajs]
        cosine_now = bool(self.grad_cosine_every) and self.rl_step % self.grad_cosine_every == 0
        # one epoch over one mini-batch is on-policy: no separate old-log-prob pass
        on_policy = self.ppo_epochs == 1 and self.minibatch_per_rank >= self.prompts_per_rank
        record = old_logprobs = None
        if on_policy:
            record = torch.zeros(mask.shape, dtype=torch.float32)
        else:
            old_logprobs = self._logprobs(trajs, mask.shape[1])
        buffer = self.trainer.datamodule.buffer
        buffer.fill(trajs, mask=mask.cpu(), **({} if on_policy else {"old_logprobs": old_logprobs}))
        t1 = time.perf_counter()
        updates = self._update(trajs, prompt_of, old_logprobs, mask, result, record, cosine_now)
        buffer.clear()
        self.engine.sync_weights(self.model)
        self.trainer.datamodule.step_done(batch)
        t_update = time.perf_counter() - t1
        self.rl_step += 1
        self._log_step(trajs, checked, keep, kept_result, result, updates, on_policy,
                       record if on_policy else old_logprobs, counters, t_rollout, t_update)

    def _log_step(self, trajs, checked, keep, kept_result, result, updates, on_policy, old_logprobs, counters,
                  t_rollout, t_update):
        sched = self.lr_schedulers()
        out: dict[str, float] = {"on_policy": float(on_policy)}
        if trajs:
            kept = [trajs[i] for i in keep]
            out.update(rollout_metrics(kept, subset_scores(checked.scores, keep), kept_result) if keep
                       else {"accuracy": float("nan"), "tool_call_rate": float("nan")})
            out.update(source_metrics(trajs, checked.scores.r_ans.tolist(), checked.scored))
            out.update(engine_logprob_gap(trajs, old_logprobs))
        out["skipped_prompts"] = float(len(self.agent.skipped))
        out.update(update_means(updates) | rollout_counter_metrics(counters, t_rollout))
        out.update({"time/rollout_s": t_rollout, "time/update_s": t_update, "rl_step": float(self.rl_step),
                    "lr": sched.get_last_lr()[0]})
        out.update(flatten_numeric(self.toolbox.metrics(), "tools/"))
        self.toolbox.reset_metrics()  # per-step tool statistics
        n = max(len(trajs), 1)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, on_step=True, batch_size=n)
        if trajs:
            self._log_checks(checked, n)
            self.log("accuracy", out["accuracy"], prog_bar=True, on_step=True, logger=False, batch_size=n)
            self.log("tool_call_rate", out["tool_call_rate"], prog_bar=True, on_step=True, logger=False, batch_size=n)
            self._save_rollouts(trajs, checked, result, keep, "train")

    def _log_checks(self, checked: ScoredBatch, n: int) -> None:
        """Answer-checking counters (``reward/judge_*``, ``reward/unscored``) and the prompt set's
        skipped rows (``data/skipped_rows``), logged under their own names."""
        data = getattr(self.trainer.datamodule, "metrics", dict)()
        self.log_dict({**checked.metrics, **data}, on_step=True, batch_size=n)

    # ---- validation --------------------------------------------------------------------------
    def validation_step(self, batch: list[Task], batch_idx: int) -> None:
        with gathered(self.model):
            trajs = self.agent.run(batch, n=self.val_group_size, greedy=True)
        checked = self.scorer.score(trajs)
        self.scorer.check_unscored(checked)
        judged = [i for i, ok in enumerate(checked.scored) if ok]
        metrics = rollout_metrics([trajs[i] for i in judged], subset_scores(checked.scores, judged), None) \
            if judged else {}
        metrics.update(source_metrics(trajs, checked.scores.r_ans.tolist(), checked.scored))
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=len(trajs), sync_dist=True)
        self._save_rollouts(trajs, checked, None, [], "val")

    def _save_rollouts(self, trajs, checked: ScoredBatch, result, keep: list[int], split: str) -> None:
        """Every rollout with its data_source and scores (:func:`metis.agent.metrics.rollout_records`)."""
        if self.rollout_log_dir is not None and self.trainer.global_rank == 0:
            JsonlLog(self.rollout_log_dir / f"{split}.jsonl", fsync=False, default=str).append(
                rollout_records(trajs, checked, result, keep, self.rl_step))

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

        Call on every rank: FSDP2 shards are gathered (a collective), rank 0 writes. Not called after
        a pre-emption (``finish_run``): the requeued job resumes and exports at its end.
        """
        export_policy(self.model, self.processor, path, is_writer=self.trainer.global_rank == 0)

    def teardown(self, stage: str) -> None:
        self.toolbox.close()

