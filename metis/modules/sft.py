"""The SFT LightningModule: cross-entropy on assistant tokens, cosine schedule, optional LoRA.

The loss is the token-mean cross-entropy over labelled (assistant) tokens of the batch, computed
through the model's own forward with ``logits_to_keep`` = the labelled positions: the
vocabulary-sized logits of system, user, image and observation tokens are never materialised.

Under ``ModelParallelStrategy`` the model is sharded with FSDP2 (:mod:`metis.modules.sharding`);
``export_pretrained`` runs on every rank (gathering the shards is a collective) and rank 0 writes.

Deliberate simplifications: one LR for all trainable weights (no separate vision LR); LoRA wraps
only the language model's linear layers (attention and MLP) and is not combined with FSDP2 (the
merged export would need whole weights); the export merges LoRA into a copy of the model.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import transformers.modeling_utils as hf_modeling

from metis.models.loading import apply_lora
from metis.modules.sharding import apply_fsdp2, compute_dtype, export_policy, is_sharded

log = logging.getLogger(__name__)

# transformers >= 5.2x accepts a boolean [B, L] ``logits_to_keep`` (per-row positions)
_BOOL_LOGITS_TO_KEEP = hasattr(hf_modeling, "slice_logits_to_keep")
MODEL_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from 1/warmup to 1, then cosine down to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class SFTModule(L.LightningModule):
    """Supervised fine-tuning of the policy on tool-use trajectories (the cold start).

    Args:
        lr, weight_decay, betas: AdamW.
        warmup_steps: linear warm-up steps; then cosine decay to ``min_lr_ratio * lr`` at
            ``max_steps`` (``None``: the trainer's ``max_steps`` or its estimated stepping batches).
        scheduler: ``cosine`` or ``constant`` (after warm-up).
        lora: ``None`` for full fine-tuning, else ``{r, alpha, dropout, target_modules}`` of
            :func:`metis.models.loading.apply_lora` (the keys of ``model.lora``).
        freeze_vision: do not train the vision tower (and merger).
        gradient_checkpointing: non-reentrant activation checkpointing in the model.
    """

    def __init__(self, model, processor, lr: float = 1e-5, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), warmup_steps: int = 0, max_steps: int | None = None,
                 min_lr_ratio: float = 0.0, scheduler: str = "cosine", lora: dict[str, Any] | None = None,
                 freeze_vision: bool = False, gradient_checkpointing: bool = False) -> None:
        super().__init__()
        if scheduler not in ("cosine", "constant"):
            raise ValueError(f"module.scheduler must be cosine or constant, got {scheduler!r}")
        if lora:
            if hasattr(model, "peft_config"):
                raise ValueError("the policy already carries LoRA adapters (model.lora): leave module.lora null")
            model = apply_lora(model, **dict(lora))
        core = model.get_base_model() if hasattr(model, "peft_config") else model
        if freeze_vision:
            for p in core.model.visual.parameters():
                p.requires_grad_(False)
        if gradient_checkpointing:
            if hasattr(core, "activation_checkpointing_enable"):  # transformers >= 5.2x
                core.activation_checkpointing_enable({"use_reentrant": False})
            else:
                core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            core.config.use_cache = False
        self.model, self.processor = model, processor
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio
        self.scheduler_name = scheduler
        self._t_last: float | None = None
        self._tokens_last = 0
        self.save_hyperparameters(ignore=["model", "processor"])

    # ---- model access ------------------------------------------------------------------------
    @property
    def is_lora(self) -> bool:
        return hasattr(self.model, "peft_config")

    def core(self):
        """The ``Qwen3VLForConditionalGeneration`` (LoRA layers, if any, are injected inside it)."""
        return self.model.get_base_model() if self.is_lora else self.model

    # ---- loss ----------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Token-mean cross-entropy over labelled tokens, and the number of labelled tokens.

        Goes through the model's own forward (FSDP2 hooks live there) with ``logits_to_keep``
        selecting the positions whose next token is labelled, so only those reach the LM head.
        """
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(next(self.core().parameters()).dtype)
        labels = batch["labels"]
        targets = torch.full_like(labels, -100)
        targets[:, :-1] = labels[:, 1:]  # position t predicts token t + 1
        keep = targets != -100
        n = int(keep.sum())
        if _BOOL_LOGITS_TO_KEEP:  # per-row positions, flattened: logits [n, V]
            logits = self.model(**inputs, logits_to_keep=keep, use_cache=False).logits
            flat_targets = targets[keep]
        else:  # older transformers: the union of positions over the batch, logits [B, K, V]
            idx = keep.any(0).nonzero().squeeze(1)
            logits = self.model(**inputs, logits_to_keep=idx, use_cache=False).logits
            sub = targets[:, idx]
            logits, flat_targets = logits[sub != -100], sub[sub != -100]
        if n == 0:
            return logits.sum() * 0.0, 0
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), flat_targets), n

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int):
        if not batch:
            return None  # every row of this batch failed to encode (counted by the DataModule)
        now = time.perf_counter()
        if self._t_last is not None and now > self._t_last:
            self.log("train/tokens_per_s", self._tokens_last / (now - self._t_last), on_step=True, batch_size=1)
        self._t_last = now
        self._tokens_last = int(batch["attention_mask"].sum())
        loss, n_labels = self.loss(batch)
        rows = batch["input_ids"].shape[0]
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=rows)
        self.log_dict({"train/label_tokens": float(n_labels), "train/tokens": float(self._tokens_last),
                       "train/padded_tokens": float(batch["input_ids"].numel()),
                       "lr": self.trainer.optimizers[0].param_groups[0]["lr"]},
                      on_step=True, batch_size=rows)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if not batch:
            return
        loss, n_labels = self.loss(batch)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=max(n_labels, 1), sync_dist=True)

    # ---- optimisation --------------------------------------------------------------------------
    def _total_steps(self) -> int:
        if self.max_steps:
            return int(self.max_steps)
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        return int(trainer.estimated_stepping_batches)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=self.betas)
        total, warmup, floor = self._total_steps(), max(0, self.warmup_steps), self.min_lr_ratio
        if self.scheduler_name == "cosine":
            fn = lambda s: cosine_with_warmup(s, warmup, total, floor)  # noqa: E731
        else:
            fn = lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- distribution ------------------------------------------------------------------------
    def configure_model(self) -> None:
        """FSDP2 (one unit per decoder layer / vision block) under ``ModelParallelStrategy``."""
        mesh = getattr(self, "device_mesh", None)
        if mesh is None or is_sharded(self.model):
            return
        if self.is_lora:
            raise NotImplementedError("SFT with LoRA under FSDP2 is not supported (the merged export needs whole "
                                      "weights): run LoRA SFT on one GPU or with trainer.strategy=ddp")
        apply_fsdp2(self.model, mesh, param_dtype=compute_dtype(self.trainer.precision, self.model))

    def on_fit_start(self) -> None:
        self.model.train()  # from_pretrained returns eval mode (docs/cpu_stack.md)

    # ---- export --------------------------------------------------------------------------------
    def export_pretrained(self, path: str | Path) -> None:
        """Save a merged Hugging Face directory (model + processor) that ``build_policy`` loads
        (as ``name_or_path`` or ``init_from``). Call on every rank: FSDP2 shards are gathered (a
        collective), rank 0 writes; LoRA is merged into a copy."""
        trainer = getattr(self, "_trainer", None)
        core = self.core()
        cached = getattr(core.config, "use_cache", None)
        if cached is False:  # turned off for gradient checkpointing; generation wants it on
            core.config.use_cache = True
        try:
            export_policy(self.model, self.processor, Path(path), is_writer=trainer is None or trainer.global_rank == 0)
        finally:
            if cached is False:
                core.config.use_cache = False
        log.info("exported the SFT policy to %s", path)
