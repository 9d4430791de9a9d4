"""SFT training throughput with and without length-aware batching, on a short/long trajectory mix.

Half of the rows are short (a direct answer, no system prompt: ~60 tokens), half are long (the
Metis system prompt, a large image, a python call and an image observation: ~700 tokens). Each
mode trains one full epoch over the same rows (same model start, same optimiser), so the real
tokens processed are identical and the ratio of tokens/s is the speed-up:

    python bench/sft_throughput.py                  # CPU, the default tiny model
    python bench/sft_throughput.py --device cuda --hidden 512 --layers 8 --rows 512

Modes: ``random`` (plain shuffled batches of ``--batch-size``), ``grouped`` (length grouping,
same batch size), ``tokens`` (length grouping with a padded-token budget per batch).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from metis.data.sft import SFTDataModule
from metis.data.sft_synthetic import make_sft_records
from metis.models import build_policy
from metis.modules.sft import SFTModule


def load_tiny(spec: dict, cache: str, dtype: str, gradient_checkpointing: bool = False):
    """``build_policy`` for a tiny model; where AutoProcessor returns a bare tokenizer (transformers
    5.17 on the GPU image), build the image-only processor directly."""
    try:
        return build_policy(tiny=spec, cache_dir=cache, dtype=dtype, attn_implementation="sdpa",
                            gradient_checkpointing=gradient_checkpointing)
    except TypeError:
        from transformers import Qwen3VLForConditionalGeneration

        from metis.models.chat_template import CHAT_TEMPLATE
        from metis.models.processor import MetisQwen3VLProcessor
        from metis.models.tiny import build_tiny

        path = build_tiny(cache, **spec)
        model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype),
                                                                attn_implementation="sdpa")
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        processor = MetisQwen3VLProcessor.from_pretrained(str(path))
        processor.chat_template = processor.tokenizer.chat_template = CHAT_TEMPLATE
        return model.train(), processor


def mixed_records(rows: int, seed: int = 0):
    short = make_sft_records(rows // 2, seed=seed, families=("arithmetic",), hard_fraction=0.0,
                             tool_fraction_unneeded=0.0)
    for rec in short:
        rec.messages = [m for m in rec.messages if m["role"] != "system"]
    long = make_sft_records(rows - rows // 2, seed=seed + 1, families=("zoom",), hard_fraction=1.0)
    return short + long


def run_epoch(module: SFTModule, loader, device: str) -> dict[str, float]:
    """One untimed warm-up step (allocator, kernels), then one timed epoch over every batch."""
    opt = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(batch):
        loss, _ = module.loss({k: v.to(device) for k, v in batch.items()})
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    batches = list(loader)  # encoding is not what is measured here
    step(batches[0])
    sync()
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    sync()
    elapsed = time.perf_counter() - t0
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    return {"tokens_per_s": real / elapsed, "seconds": elapsed, "steps": len(batches), "real_tokens": real,
            "padding_fraction": 1 - real / padded}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=None, help="budget of the 'tokens' mode (default: "
                    "batch-size x mean length)")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--cache", default="/tmp/metis-bench/tiny")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = load_tiny({"hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
                                  "num_hidden_layers": args.layers}, args.cache, args.dtype)
    model.to(args.device)
    records = mixed_records(args.rows)
    results = {}
    for mode in ("random", "grouped", "tokens"):
        dm = SFTDataModule(records, processor, batch_size=None if mode == "tokens" else args.batch_size,
                           batch_tokens=None, length_grouping=mode != "random", val_fraction=0.0, seed=0,
                           max_length=8192)
        if mode == "tokens":
            dm.setup()
            mean = sum(dm.train_set.lengths) / len(dm.train_set.lengths)
            dm.batch_tokens = args.batch_tokens or int(args.batch_size * mean)
            dm.batch_size = None
        runs = [run_epoch(SFTModule(copy.deepcopy(model), processor), dm.train_dataloader(), args.device)
                for _ in range(args.repeats)]
        results[mode] = max(runs, key=lambda r: r["tokens_per_s"])  # best of repeats: least disturbed
    base = results["random"]["tokens_per_s"]
    for mode, r in results.items():
        r["speedup_vs_random"] = r["tokens_per_s"] / base
    print(json.dumps({"device": args.device, "rows": args.rows, "batch_size": args.batch_size,
                      "hidden": args.hidden, "layers": args.layers, "threads": torch.get_num_threads(),
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
