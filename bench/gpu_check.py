"""GPU check: the 8B path on one GPU, with random weights (nothing downloaded).

    python bench/gpu_check.py [--layers N] [--out report.json]

1. builds Qwen3-VL with the 8B config (random bf16 weights) on the GPU;
2. FSDP2 (metis.modules.sharding.apply_fsdp2 over a 1-GPU mesh) + activation checkpointing +
   flash-attention 2 when installed (else sdpa): AdamW training steps on image+text sequences;
   reports tokens/s, MFU (6 N tokens/s over the card's dense bf16 peak) and peak memory;
3. rollouts through Metis's AgentLoop with the `hf` engine (batch of trajectories, one turn), and
   with `vllm` when installed; reports generated tokens/s of each, and what was skipped.
``--device cpu --layers 1 --vision-layers 1 --vocab 4096`` runs the same code small on a CPU (to check the script itself).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time

import torch

from metis.agent.engines import HFEngine
from metis.agent.loop import AgentLoop, RolloutConfig
from metis.data.synthetic import make_tasks
from metis.models.configs import qwen3_vl_config
from metis.models.loading import pick_attention
from metis.models.tiny import TINY_DEFAULTS, tiny_processor, train_tokenizer
from metis.modules.sharding import apply_fsdp2, gathered

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "B200": 2250e12}


class NoTools:
    """A toolbox with no tools (rollouts and updates without tool calls)."""

    def specs(self):
        return []

    def execute(self, traj_id, name, arguments):
        raise RuntimeError("no tools in this check")

    def metrics(self):
        return {}

    def reset_metrics(self):
        pass

    def start(self, traj_id, images, meta=None):
        pass

    def end(self, traj_id):
        pass

    def close(self):
        pass


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(args, device):
    tok = train_tokenizer(2048, 0)
    spec = dict(TINY_DEFAULTS, min_pixels=4096, max_pixels=args.image_side ** 2)
    processor = tiny_processor(tok, spec)
    cfg = qwen3_vl_config(tok, num_hidden_layers=args.layers, vision_depth=args.vision_layers,
                          vocab_size=args.vocab)
    from transformers import Qwen3VLForConditionalGeneration

    attn = pick_attention("auto", str(device))
    t0 = time.perf_counter()
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=args.dtype, attn_implementation=attn)
    sync(device)
    return model, processor, attn, time.perf_counter() - t0


def batch(model, processor, args, device):
    """B sequences of L tokens, each starting with one image of image_side x image_side."""
    from PIL import Image

    imgs = [Image.new("RGB", (args.image_side, args.image_side), (i * 40 % 255, 90, 160)) for i in range(args.batch)]
    enc = processor.image_processor(images=imgs, return_tensors="pt")
    grid = enc["image_grid_thw"]
    n_img = int(grid[0].prod()) // 4
    cfg = model.config
    head = [cfg.vision_start_token_id] + [cfg.image_token_id] * n_img + [cfg.vision_end_token_id]
    gen = torch.Generator().manual_seed(0)
    body = torch.randint(10, 800, (args.batch, args.seq - len(head)), generator=gen)
    ids = torch.cat([torch.tensor(head).expand(args.batch, -1), body], dim=1)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "mm_token_type_ids": (ids == cfg.image_token_id).long().to(device),
            "pixel_values": enc["pixel_values"].to(device, args.dtype), "image_grid_thw": grid.to(device)}


def train_steps(model, processor, args, device, report):
    if device.type == "cuda":
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("nccl", rank=0, world_size=1)
        mesh = init_device_mesh("cuda", (1,), mesh_dim_names=("data_parallel",))
        apply_fsdp2(model, mesh, param_dtype=args.dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    inputs = batch(model, processor, args, device)
    n_params = sum(p.numel() for p in model.parameters())
    times = []
    for step in range(args.steps + 1):
        sync(device)
        t0 = time.perf_counter()
        out = model(**inputs, labels=inputs["input_ids"], use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if step:  # the first step warms up
            times.append(time.perf_counter() - t0)
        report.setdefault("train_loss", []).append(float(out.loss.detach()))
    step_s = sum(times) / len(times)
    tokens = args.batch * args.seq
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    report["train"] = {"params_b": n_params / 1e9, "batch": args.batch, "seq": args.seq, "step_s": step_s,
                       "tokens_per_s": tokens / step_s,
                       "mfu": (6 * n_params * tokens / step_s / peak) if peak else None,
                       "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    del opt
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rollouts(model, processor, args, device, report):
    tasks = make_tasks(args.rollouts, seed=0)
    engine = HFEngine(temperature=1.0, max_batch_size=args.rollouts)
    engine.bind(model, processor)
    loop = AgentLoop(engine, NoTools(), processor,
                     RolloutConfig(max_turns=1, max_new_tokens=args.new_tokens, max_response_tokens=args.new_tokens))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with gathered(model):
        sync(device)
        t0 = time.perf_counter()
        trajs = loop.run(tasks, n=1)
        sync(device)
        elapsed = time.perf_counter() - t0
    generated = sum(sum(t.response_mask) for t in trajs)
    report["rollout_hf"] = {"trajectories": len(trajs), "generated_tokens": generated, "seconds": elapsed,
                            "tokens_per_s": generated / elapsed, "trajectories_per_s": len(trajs) / elapsed,
                            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}
    if importlib.util.find_spec("vllm") is None:
        report["rollout_vllm"] = "skipped: vLLM is not installed on this machine"
    else:
        report["rollout_vllm"] = "skipped: the vllm engine needs a saved model directory; run bench with --save"


def write_report(report: dict, out: str | None) -> None:
    """Print the report as JSON and, given ``--out``, write it there (the device run returns that file)."""
    text = json.dumps(report, indent=1)
    print(text, flush=True)
    if out:
        with open(out, "w") as fh:
            fh.write(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=None, help="text layers (default: the 8B's 36)")
    ap.add_argument("--vision-layers", type=int, default=None, help="vision blocks (default: the 8B's 27)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the 8B's 151936)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    args.dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    import transformers

    report = {"torch": torch.__version__, "transformers": transformers.__version__,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "flash_attn": importlib.util.find_spec("flash_attn") is not None,
              "vllm": importlib.util.find_spec("vllm") is not None}
    model, processor, attn, build_s = build(args, device)
    report.update(attention=attn, build_s=build_s)
    print(json.dumps(report), flush=True)
    train_steps(model, processor, args, device, report)
    print(json.dumps(report["train"]), flush=True)
    rollouts(model, processor, args, device, report)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
