"""GPU check of the RL update at 8B scale: a few real HDPO steps through the real modules.

    python bench/gpu_hdpo_check.py [--layers 18] [--steps 3] [--out report.json]

Qwen3-VL with the 8B config (random weights; ``--layers`` text layers, default 18 so that fp32
weights + gradients + AdamW state, 16 bytes a parameter, fit one 141 GB card; ``--layers 36`` is
the full 8B and needs several cards) under the 8B precision settings: fp32 master weights and
optimizer state, FSDP2 (Lightning ``ModelParallelStrategy``) with bf16 compute
(``precision=bf16-mixed``), activation checkpointing, the chunked LM head. Prompts are rows in
the Metis-RL layout (``prompt`` messages with ``<image>`` placeholders, ``images`` bytes,
``reward_model.ground_truth``) turned into tasks; rollouts run through the real AgentLoop with a
scripted engine (fixed-length responses, half of them correct: generation speed is measured by
bench/gpu_check.py), then RLModule.training_step scores, computes advantages and updates.
Prints per step: s/step, tokens/s, MFU (6 N tokens/s over the card's dense bf16 peak; the
recomputation of checkpointing not counted), peak memory, and the fraction of weights changed by
the step (on a fixed sample of up to 4,096 entries per parameter tensor).
Needs torch, transformers, lightning, peft-free; no hydra/wandb/datasets.
``--device cpu --tiny --response 64 --image-side 64`` checks the script on a CPU (the tiny model's sizes).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gpu_check import NoTools, write_report  # noqa: E402
from metis.agent.loop import RolloutConfig  # noqa: E402
from metis.data.prompts import PromptDataModule  # noqa: E402
from metis.core.task import Task  # noqa: E402
from metis.models.configs import qwen3_vl_config  # noqa: E402
from metis.models.loading import pick_attention  # noqa: E402
from metis.models.tiny import TINY_DEFAULTS, tiny_config, tiny_processor, train_tokenizer  # noqa: E402
from metis.modules.rl import RLModule  # noqa: E402
from metis.rl.scheme import PolicyLoss, RewardScheme  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


def rl_rows(n: int, side: int) -> list[dict]:
    """Rows in the published Metis-RL layout (verl's RL convention)."""
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (side, side), (40 * i % 255, 120, 200)).save(buf, format="PNG")
        rows.append({"data_source": "synthetic", "ability": "math",
                     "prompt": [{"role": "system", "content": "You are a helpful assistant."},
                                {"role": "user", "content": f"<image>What is {6 + i} * 7?"}],
                     "images": [{"bytes": buf.getvalue()}],
                     "reward_model": {"ground_truth": str((6 + i) * 7), "style": "rule"},
                     "extra_info": {"answer": str((6 + i) * 7), "index": i, "question": f"What is {6 + i} * 7?"}})
    return rows


def task_from_row(row: dict) -> Task:
    user = next(m["content"] for m in row["prompt"] if m["role"] == "user")
    images = [Image.open(io.BytesIO(im["bytes"])).convert("RGB") for im in row["images"]]
    return Task(id=f"rl-{row['extra_info']['index']}", question=user, images=images,
                answer=str(row["reward_model"]["ground_truth"]), verifier="numeric", data_source=row["data_source"])


class FixedLengthEngine:
    """One turn per rollout: ``length`` tokens ending in an answer, correct for every other rollout."""

    def __init__(self, processor, length: int, seed: int = 0):
        self.tok, self.length = processor.tokenizer, length
        self.gen = torch.Generator().manual_seed(seed)
        self.count = 0

    bind = after_rollout = sync_weights = staticmethod(lambda *args: None)  # nothing to bind or sync

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        out = []
        for t in trajs:
            answer = t.task.answer if self.count % 2 == 0 else "0"
            self.count += 1
            tail = self.tok(f"<answer>{answer}</answer><|im_end|>", add_special_tokens=False)["input_ids"]
            filler = torch.randint(300, 1500, (max(self.length - len(tail), 0),), generator=self.gen).tolist()
            out.append((filler + tail)[:max_new_tokens])
        return out


class Probe(L.Callback):
    """Per step: time, trained tokens, peak memory and the fraction of (sampled) weights changed."""

    def __init__(self, n_params: int, peak_flops: float | None):
        self.n_params, self.peak, self.steps = n_params, peak_flops, []

    def _sample(self, module):
        out = []
        for p in module.model.parameters():
            local = p.to_local() if hasattr(p, "to_local") else p
            flat = local.detach().reshape(-1)
            k = min(flat.numel(), 4096)
            idx = torch.arange(k, device=flat.device) * (flat.numel() // k)
            out.append(flat[idx].clone())
        return out

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.before, self.t0 = self._sample(module), time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.t0
        after = self._sample(module)
        changed = sum(int((a != b).sum()) for a, b in zip(after, self.before))
        total = sum(a.numel() for a in after)
        tokens = module.trained_tokens
        step = {"step": len(self.steps) + 1, "s_per_step": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
                "mfu": 6 * self.n_params * tokens / seconds / self.peak if self.peak else None,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                "frac_weights_changed": changed / total,
                "loss_total": float(trainer.callback_metrics.get("train/loss/total", float("nan")))}
        self.steps.append(step)
        print(json.dumps(step), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=18)
    ap.add_argument("--vision-layers", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--response", type=int, default=2048)
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--micro-batch-tokens", type=int, default=8192)
    ap.add_argument("--chunk-tokens", type=int, default=2048)
    ap.add_argument("--tiny", action="store_true", help="the tiny model's sizes (a CPU check of the script)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    import transformers

    tok = train_tokenizer(2048, 0)
    processor = tiny_processor(tok, dict(TINY_DEFAULTS, min_pixels=4096, max_pixels=args.image_side ** 2))
    if args.tiny:
        cfg = tiny_config(tok, TINY_DEFAULTS)
    else:
        cfg = qwen3_vl_config(tok, num_hidden_layers=args.layers, vision_depth=args.vision_layers,
                              vocab_size=args.vocab)
    from transformers import Qwen3VLForConditionalGeneration

    attn = pick_attention("auto", str(device))
    t0 = time.perf_counter()
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=torch.float32, attn_implementation=attn)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    n_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report = {"torch": torch.__version__, "transformers": transformers.__version__, "lightning": L.__version__,
              "device": name, "attention": attn, "params_b": n_params / 1e9, "build_s": time.perf_counter() - t0,
              "layers": cfg.text_config.num_hidden_layers, "vocab": cfg.text_config.vocab_size,
              "prompts": args.prompts, "group": args.group, "response_tokens": args.response}
    print(json.dumps(report), flush=True)

    tasks = [task_from_row(r) for r in rl_rows(max(args.prompts * (args.steps + 1), 4), args.image_side)]
    engine = FixedLengthEngine(processor, args.response)
    rollout = RolloutConfig(max_turns=1, max_new_tokens=args.response, max_response_tokens=args.response,
                            max_prompt_tokens=8192, tool_workers=1)
    module = RLModule(model, processor, engine, NoTools(), RewardScheme("hdpo"), PolicyLoss(), rollout,
                        group_size=args.group, micro_batch_tokens=args.micro_batch_tokens,
                        logprob_chunk_tokens=args.chunk_tokens, lr=1e-6, rollout_log_dir=None, grad_cosine_every=0)
    run = module.agent.run

    def counted(*a, **k):
        trajs = run(*a, **k)
        module.trained_tokens = sum(len(t.input_ids) for t in trajs)
        return trajs

    module.agent.run = counted
    from lightning.pytorch.strategies import ModelParallelStrategy

    probe = Probe(n_params, next((v for k, v in PEAK_BF16.items() if k in name), None))
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1,
                                                       timeout=timedelta(minutes=10)),
                        precision="bf16-mixed", max_steps=args.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, use_distributed_sampler=False,
                        callbacks=[probe])
    trainer.fit(module, datamodule=PromptDataModule(lambda: {"train": tasks, "val": []},
                                                    prompts_per_step=args.prompts))
    report["steps"] = probe.steps
    report["master_dtype"] = str(next(module.model.parameters()).dtype)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
