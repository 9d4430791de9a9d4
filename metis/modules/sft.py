"""The SFT LightningModule: cross-entropy on assistant tokens, cosine schedule, optional LoRA.

The loss is the token-mean cross-entropy over labelled (assistant) tokens of the batch. Only the
hidden states at labelled positions go through the LM head (in float32), so the vocabulary-sized
logits of system, user, image and observation tokens are never materialised.

Deliberate simplifications: one optimiser group (no separate LR for the vision tower); LoRA wraps
only the language model's linear layers (attention and MLP); ``export_pretrained`` merges LoRA in
place (it is meant to run once, after ``fit``); under a sharded strategy the full state dict is
gathered on every rank at the end of training (``on_train_end``) and written by rank 0.
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

log = logging.getLogger(__name__)

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
MODEL_INPUTS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier: linear warm-up from 1/warmup to 1, then cosine down to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def apply_lora(model, lora: dict[str, Any]):
    """Wrap the language model's linear layers with PEFT LoRA; everything else is frozen."""
    from peft import LoraConfig, get_peft_model

    cfg = dict(lora)
    cfg.setdefault("target_modules", LORA_TARGETS)
    cfg.setdefault("r", 16)
    cfg.setdefault("lora_alpha", 2 * cfg["r"])
    cfg.setdefault("lora_dropout", 0.0)
    return get_peft_model(model, LoraConfig(**cfg))


class SFTModule(L.LightningModule):
    """Supervised fine-tuning of the policy on tool-use trajectories (the cold start).

    Args:
        lr, weight_decay, betas: AdamW.
        warmup_steps: linear warm-up steps; then cosine decay to ``min_lr_ratio * lr`` at
            ``max_steps`` (``None``: the trainer's ``max_steps`` or its estimated stepping batches).
        scheduler: ``cosine`` or ``constant`` (after warm-up).
        lora: ``None`` for full fine-tuning, else PEFT ``LoraConfig`` kwargs (``r``, ``lora_alpha``, ...).
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
        if freeze_vision:
            for p in model.model.visual.parameters():
                p.requires_grad_(False)
        if gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if lora:
            model = apply_lora(model, lora)
        self.model, self.processor = model, processor
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.max_steps, self.min_lr_ratio = warmup_steps, max_steps, min_lr_ratio
        self.scheduler_name = scheduler
        self._t_last: float | None = None
        self._tokens_last = 0
        self._export_state: dict[str, torch.Tensor] | None = None
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
        """Token-mean cross-entropy over labelled tokens, and the number of labelled tokens."""
        core = self.core()
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(next(core.parameters()).dtype)
        hidden = core.model(**inputs, use_cache=False).last_hidden_state[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        n = int(keep.sum())
        if n == 0:
            return hidden.sum() * 0.0, 0
        logits = core.lm_head(hidden[keep]).float()
        return F.cross_entropy(logits, targets[keep]), n

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

    def on_fit_start(self) -> None:
        if self.is_lora and _is_sharded(self.model):
            raise NotImplementedError("LoRA under a sharded strategy (FSDP) is not supported here: the adapters "
                                      "are small, use trainer.strategy=ddp for LoRA runs")
        self.model.train()  # from_pretrained returns eval mode (CPU-STACK.md)

    # ---- export --------------------------------------------------------------------------------
    def on_train_end(self) -> None:
        """Gather a full state dict on every rank when parameters are sharded (FSDP)."""
        if self.trainer.world_size <= 1 or not _is_sharded(self.model):
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        root = self.trainer.strategy.model  # the wrapped LightningModule: its keys start with "model."
        state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.trainer.global_rank == 0:
            state = _strip_prefix(state)
            self._export_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}

    def export_pretrained(self, path: str | Path) -> None:
        """Save a merged Hugging Face directory (model + processor) that ``build_policy`` loads
        (as ``name_or_path`` or ``init_from``)."""
        path = Path(path)
        model = self.model
        if self._export_state is not None:
            model.save_pretrained(path, state_dict=self._export_state)
        else:
            if self.is_lora:
                model = self.model.merge_and_unload()
                self.model = model
            model.config.use_cache = True
            model.save_pretrained(path)
        self.processor.save_pretrained(path)
        log.info("exported the SFT policy to %s", path)


def _is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters()) or any(
        type(m).__name__.startswith("FullyShardedDataParallel") for m in model.modules())


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", ""): v
            for k, v in state.items()}
