"""SFTModule: the loss, a short fit that drives it down, the schedule, LoRA, and the HF export."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch

from metis.data.sft import SFTDataModule, collate_sft, encode_record
from metis.data.sft_synthetic import make_sft_records
from metis.models import build_policy
from metis.modules.sft import SFTModule, cosine_with_warmup
from sft_test_util import one_thread_when_busy


class LossTrace(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def small_batch(processor, n=3, seed=5):
    return collate_sft([encode_record(r, processor) for r in make_sft_records(n, seed=seed)], 0)


@pytest.mark.parametrize("bool_mask", [True, False], ids=["per-row-positions", "union-positions"])
def test_loss_matches_the_hf_loss(tiny_policy, monkeypatch, bool_mask):
    from metis.modules import sft

    monkeypatch.setattr(sft, "_BOOL_LOGITS_TO_KEEP", bool_mask and sft._BOOL_LOGITS_TO_KEEP)
    model, processor = tiny_policy
    batch = small_batch(processor)
    module = SFTModule(model, processor)
    with torch.no_grad():
        ours, n = module.loss(batch)
        ref = model(**{k: v for k, v in batch.items()}, use_cache=False).loss
    assert n == int((batch["labels"][:, 1:] != -100).sum())
    assert torch.allclose(ours, ref, atol=1e-5)


@pytest.fixture(scope="module")
def fitted(tiny_policy, tmp_path_factory):
    """25 steps of SFT on 40 synthetic trajectories (a copy of the session's tiny model)."""
    model, processor = tiny_policy
    model = copy.deepcopy(model)
    dm = SFTDataModule(lambda: make_sft_records(40, seed=1), processor, batch_size=4, val_fraction=0.1, seed=0)
    module = SFTModule(model, processor, lr=3e-3, warmup_steps=3, min_lr_ratio=0.1)
    trace = LossTrace()
    trainer = L.Trainer(accelerator="cpu", max_steps=25, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, val_check_interval=25,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, callbacks=[trace])
    with one_thread_when_busy():
        trainer.fit(module, datamodule=dm)
    return module, trainer, trace, tmp_path_factory.mktemp("sft-export")


def test_short_fit_drives_the_loss_down(fitted):
    module, trainer, trace, _ = fitted
    losses = trace.losses
    assert len(losses) == 25
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, f"loss {first:.2f} -> {last:.2f}"
    metrics = trainer.callback_metrics
    assert "val/loss" in metrics and math.isfinite(float(metrics["val/loss"]))
    assert float(metrics["train/tokens_per_s"]) > 0
    assert float(metrics["lr"]) < 3e-3  # decayed by the cosine schedule


def test_export_loads_with_build_policy(fitted, tiny_policy, tiny_cache):
    module, _, _, out = fitted
    module.export_pretrained(out)
    _, processor = tiny_policy
    batch = small_batch(processor, n=2, seed=9)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    module.model.eval()
    with torch.no_grad():
        want = module.model(**inputs).logits
        by_path, proc = build_policy(name_or_path=str(out), dtype="float32", attn_implementation="sdpa")
        by_init, _ = build_policy(tiny={}, init_from=str(out), cache_dir=f"{tiny_cache}/tiny", dtype="float32",
                                  attn_implementation="sdpa")
        for m in (by_path.eval(), by_init.eval()):
            assert torch.allclose(m(**inputs).logits, want, atol=1e-5)
    assert proc.tokenizer.get_vocab() == processor.tokenizer.get_vocab()


def test_cosine_with_warmup():
    assert cosine_with_warmup(0, 10, 100) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 10, 100) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 10, 100, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert cosine_with_warmup(500, 10, 100) == pytest.approx(0.0)


def test_lora_trains_adapters_only_and_exports_merged(tiny_policy, tmp_path):
    model, processor = tiny_policy
    module = SFTModule(copy.deepcopy(model), processor, lr=1e-2, lora={"r": 4, "alpha": 8}, freeze_vision=True)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    batch = small_batch(processor, n=2)
    opt = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss, _ = module.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    module.model.eval()
    with torch.no_grad():
        adapted = module.model(**inputs).logits
        base = model(**inputs).logits
    assert not torch.allclose(adapted, base, atol=1e-4)  # the adapters changed the policy
    module.export_pretrained(tmp_path / "hf")
    reloaded, _ = build_policy(name_or_path=str(tmp_path / "hf"), dtype="float32", attn_implementation="sdpa")
    with torch.no_grad():
        assert torch.allclose(reloaded.eval()(**inputs).logits, adapted, atol=1e-4)
    assert not any("lora" in k for k in reloaded.state_dict())


def test_freeze_vision_and_gradient_checkpointing(tiny_policy):
    model, processor = tiny_policy
    module = SFTModule(copy.deepcopy(model), processor, freeze_vision=True, gradient_checkpointing=True)
    loss, _ = module.loss(small_batch(processor, n=2))
    loss.backward()
    core = module.core()
    assert all(p.grad is None for p in core.model.visual.parameters())
    assert core.lm_head.weight.grad is not None and core.is_gradient_checkpointing
