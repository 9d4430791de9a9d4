"""GPU check of the SFT path (a script, not collected by pytest): bf16 + FSDP2 on one GPU.

Trains a small Qwen3-VL through Lightning's ``ModelParallelStrategy`` (so ``configure_model``
applies FSDP2 and the export gathers the shards), exports, reloads with
``build_policy`` and compares logits; prints one JSON line.

    python tests/sft/gpu_sft_check.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from metis.data.sft import SFTDataModule, collate_sft, encode_record
from metis.data.sft_synthetic import make_sft_records
from metis.modules import sft as sft_module
from metis.modules.sft import SFTModule

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.sft_throughput import load_tiny  # noqa: E402  (one copy of the GPU-image fallback)


class Trace(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--accelerator", default="gpu", help="cpu: the same path with gloo (slow, for a dry run)")
    args = ap.parse_args()
    cache = tempfile.mkdtemp()
    spec = {"hidden_size": args.hidden, "intermediate_size": 2 * args.hidden, "num_hidden_layers": args.layers}
    model, processor = load_tiny(spec, cache, "bfloat16", gradient_checkpointing=True)
    dm = SFTDataModule(lambda: make_sft_records(96, seed=0), processor, batch_size=8, val_fraction=0.1)
    module = SFTModule(model, processor, lr=2e-3, warmup_steps=3)
    trace = Trace()
    dev = "cuda" if args.accelerator == "gpu" else "cpu"
    trainer = L.Trainer(accelerator=args.accelerator, devices=1, precision="bf16-true", max_steps=args.steps,
                        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1),
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, val_check_interval=args.steps, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, callbacks=[trace])
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    fit_s = time.perf_counter() - t0
    sharded = sft_module.is_sharded(module.model)
    out = f"{cache}/hf"
    module.export_pretrained(out)
    batch = collate_sft([encode_record(r, processor) for r in make_sft_records(2, seed=9)], 0)
    inputs = {k: v.to(dev) for k, v in batch.items() if k != "labels"}
    inputs["pixel_values"] = inputs["pixel_values"].bfloat16()
    module.model.eval()
    from transformers import Qwen3VLForConditionalGeneration

    reloaded = Qwen3VLForConditionalGeneration.from_pretrained(out, dtype=torch.bfloat16, attn_implementation="sdpa")
    reloaded.to(dev).eval()
    with torch.no_grad():
        a = module.model(**inputs).logits.float()
        b = reloaded(**inputs).logits.float()
    print(json.dumps({
        "fsdp2_sharded": sharded,
        "bool_logits_to_keep": sft_module._BOOL_LOGITS_TO_KEEP, "fit_s": round(fit_s, 1),
        "loss_first3": round(sum(trace.losses[:3]) / 3, 3), "loss_last3": round(sum(trace.losses[-3:]) / 3, 3),
        "val_loss": float(trainer.callback_metrics.get("val/loss", float("nan"))),
        "export_logits_max_abs_diff": float((a - b).abs().max()), "logit_scale": float(a.abs().max()),
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }))


if __name__ == "__main__":
    main()
