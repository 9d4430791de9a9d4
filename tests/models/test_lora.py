"""LoRA on the tiny policy: only adapters train, the disabled adapter is the reference, export merges."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import ANSWER, CALL, WRONG, CyclingEngine, FakeToolBox

from metis.agent.loop import RolloutConfig
from metis.data.prompts import PromptDataModule
from metis.data.synthetic import make_tasks
from metis.models import build_policy
from metis.modules.rl import RLModule
from metis.rl.scheme import PolicyLoss, RewardScheme


def test_lora_step_with_kl_to_the_base_and_merged_export(tiny_cache, tmp_path):
    model, processor = build_policy(tiny={}, cache_dir=f"{tiny_cache}/tiny", lora={"r": 4, "alpha": 8})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    tasks = make_tasks(1, seed=0, families=("arithmetic",), hard_fraction=0.0)
    tasks[0].answer = "42"
    engine = CyclingEngine(processor, [[CALL, ANSWER], [ANSWER], [CALL, CALL, ANSWER], [WRONG]])
    module = RLModule(model, processor, engine, FakeToolBox(), RewardScheme("hdpo"),
                        PolicyLoss(kl_coef=0.1), RolloutConfig(max_turns=4), group_size=4, lr=5e-2,
                        rollout_log_dir=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, datamodule=PromptDataModule(lambda: {"train": tasks, "val": []}, prompts_per_step=1))
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert "train/kl/ref" in m and m["train/kl/ref"] >= 0.0
    for n, p in model.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n  # the base never moves
    module.export_pretrained(tmp_path / "hf")
    merged, _ = build_policy(name_or_path=str(tmp_path / "hf"))
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_quantization_needs_lora_and_cuda(tiny_cache):
    with pytest.raises((ValueError, RuntimeError), match="lora|CUDA"):
        build_policy(tiny={}, cache_dir=f"{tiny_cache}/tiny", quantization="4bit")
