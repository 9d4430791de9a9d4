"""GPU rollout benchmark: the 8B architecture (random bf16 weights), trajectories that make tool calls.

    python bench/rollout_gpu.py [--out DIR] [--limit-s 420]
    python bench/rollout_gpu.py --device cpu --layers 1 --vision-layers 1 --vocab 4096 --dtype float32 \
        --image-side 224 --sizes 2 --stress 50 --stress-trajectories 4   # a check of the script itself

Needs torch + transformers only (no vLLM, flash-attn, Hydra or wandb; vLLM is measured when
installed). Every contender runs the agent loop (``AgentLoop``) on the same tasks, through the
benchmark's scripted policy (``bench.common.ScriptedToolCalls``: 1-3 forced tool-call turns, then a
free turn of 48 tokens) and a tool that answers at once, so all generate the same tokens:

* ``hf-generate``: ``HFEngine(kv_cache=False)``, plain ``model.generate`` on the re-encoded context;
* ``hf-unbudgeted``: the ``hf`` engine as it was before the KV budget (own decode loop, caches kept);
* ``hf-budget``: the ``hf`` engine with ``hdpo_8b``'s settings (``kv_cache_gib=40``,
  ``max_prefill_tokens=32768``, ``max_batch_size=256``);
* ``vllm`` (when installed): the scripted policy cannot run inside vLLM, so it generates freely
  (no tool calls) the same number of tokens per trajectory: tokens/s only, not comparable turn
  by turn.

Then a stress run at the ``hdpo_8b`` settings: 256 trajectories of ``--stress`` prompt tokens
(``hf-budget``; the unbudgeted engine would keep 256 x ~5k tokens x 144 KiB = 190 GB of cache).
Reports generated tokens/s, wall time, peak GPU memory and the engine's counters, one JSON line
per run and ``rollout_gpu.json`` in ``--out``. Runs are ordered by importance and skipped once
``--limit-s`` has passed, so the script ends in time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

from bench.common import ScriptedToolCalls, make_tasks
from bench.gpu_check import build, sync
from metis.agent.engines import HFEngine
from metis.agent.loop import AgentLoop, RolloutConfig

MIXED = [1, 2, 3]  # tool-call turns per task, as bench/rl_bench.py
BUDGET = dict(kv_cache_gib=40.0, max_prefill_tokens=32768, max_batch_size=256)  # conf/experiment/hdpo_8b.yaml


class Observation:
    def __init__(self, text: str) -> None:
        self.text, self.images, self.error = text, [], None


class InstantTools:
    """A python tool that answers at once: the benchmark measures generation, not tools."""

    def specs(self):
        return [{"name": "python", "description": "run code", "parameters": {"code": "str"}}]

    def start(self, traj_id, images, meta=None):
        pass

    def execute(self, traj_id, name, arguments):
        return Observation("Code execution result:\n42")

    def end(self, traj_id):
        pass


def engine_for(kind: str, processor, model_dir: str | None):
    forcer = [ScriptedToolCalls(processor.tokenizer, free_tokens=48)]
    if kind == "hf-generate":
        return HFEngine(kv_cache=False, max_batch_size=256, logits_processors=forcer)
    if kind == "hf-unbudgeted":
        return HFEngine(max_batch_size=256, logits_processors=forcer)
    if kind == "hf-budget":
        return HFEngine(logits_processors=forcer, **BUDGET)
    from metis.agent.vllm_engine import VLLMEngine

    return VLLMEngine(gpu_memory_utilization=0.3, max_model_len=16384, enable_sleep_mode=False, max_num_seqs=256)


def run(kind: str, model, processor, device, trajectories: int, image_side: int, prompt_pad: int = 0,
        turns=None, model_dir: str | None = None) -> dict:
    turns = turns or (MIXED * trajectories)[: max(1, trajectories // 4)]
    tasks = make_tasks(turns, image_size=image_side)
    n = max(1, trajectories // len(tasks))
    if prompt_pad:  # long prompts: ~prompt_pad more tokens of question
        per_word = len(processor.tokenizer(" fill" * 100, add_special_tokens=False)["input_ids"]) / 100
        for t in tasks:
            t.question = t.question + " fill" * int(prompt_pad / per_word)
    engine = engine_for(kind, processor, model_dir)
    engine.bind(model, processor)
    free = kind == "vllm"
    loop = AgentLoop(engine, InstantTools(), processor,
                     RolloutConfig(max_turns=1 if free else 5, max_new_tokens=200 if free else 64,
                                   max_response_tokens=4096, max_prompt_tokens=prompt_pad + 4096, tool_workers=8))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    t0 = time.perf_counter()
    trajs = loop.run(tasks, n=n)
    sync(device)
    wall = time.perf_counter() - t0
    tokens = sum(sum(t.response_mask) for t in trajs)
    return {"engine": kind, "trajectories": len(trajs), "generated_tokens": tokens, "wall_s": round(wall, 2),
            "tokens_per_s": round(tokens / wall, 1), "tool_calls": sum(t.num_tool_calls for t in trajs),
            "prompt_tokens": len(trajs[0].prompt_ids) if trajs else 0,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 1) if device.type == "cuda" else None,
            "engine_stats": dict(getattr(engine, "stats", {}))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--vision-layers", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--image-side", type=int, default=448)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sizes", default="16,64", help="concurrent trajectories per run")
    ap.add_argument("--stress", type=int, default=5000, help="prompt tokens of the 256-trajectory stress run (0: skip)")
    ap.add_argument("--stress-trajectories", type=int, default=256)
    ap.add_argument("--limit-s", type=float, default=420.0, help="no new run starts after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    args.dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    model, processor, attn, build_s = build(args, device)
    model.eval()
    import transformers

    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": transformers.__version__, "attention": attn, "build_s": round(build_s, 1),
              "vllm": importlib.util.find_spec("vllm") is not None, "runs": [], "skipped": []}
    sizes = [int(s) for s in args.sizes.split(",")]
    plan = [("hf-budget", s) for s in sizes] + [("hf-unbudgeted", s) for s in sizes]
    plan += [("stress", args.stress_trajectories)] if args.stress else []
    plan += [("hf-generate", sizes[0])] + ([("vllm", s) for s in sizes] if report["vllm"] else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, size in plan:
        if time.perf_counter() - t_start > args.limit_s:
            report["skipped"].append(f"{kind} x{size}: time limit")
            continue
        try:
            if kind == "stress":
                r = run("hf-budget", model, processor, device, size, args.image_side, prompt_pad=args.stress,
                      turns=[0] * max(1, size // 16))
                r["engine"] = "hf-budget stress (hdpo_8b settings)"
            elif kind == "vllm":
                model_dir = out / "model_dir"  # config + processor only: vLLM starts with dummy weights
                model.config.save_pretrained(model_dir)
                processor.save_pretrained(model_dir)
                model.config._name_or_path = str(model_dir)
                r = run(kind, model, processor, device, size, args.image_side, model_dir=str(model_dir))
            else:
                r = run(kind, model, processor, device, size, args.image_side)
        except torch.cuda.OutOfMemoryError as err:
            r = {"engine": kind, "trajectories": size, "error": f"out of memory: {str(err)[:200]}"}
        except Exception as err:  # one contender failing must not lose the others' figures
            r = {"engine": kind, "trajectories": size, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        report["runs"].append(r)
        print(json.dumps(r), flush=True)
        (out / "rollout_gpu.json").write_text(json.dumps(report, indent=1))
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    (out / "rollout_gpu.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}), flush=True)


if __name__ == "__main__":
    main()
