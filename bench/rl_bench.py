"""Metis vs the loops researchers would otherwise use, on the tiny Qwen3-VL (CPU).

    bash bench/run.sh                # sets up bench/.venv (torch 2.13 CPU + TRL + Metis) once, then runs this
    python bench/rl_bench.py [--quick] [--sections rollout,step,scaling,sft] [--repeats 3]

Sections (every contender gets the same tiny model weights, prompts, sandboxed Python tool,
sampling settings (T=1, top-p 1, top-k off) and the same scripted tool-call policy: see
bench/common.py):

1. rollout  - generated model tokens/s and trajectories/s, group size 8 and 16, 3 prompts scripted
              to make 1, 2 and 3 tool calls: Metis, a naive one-trajectory-at-a-time loop, TRL
              GRPOTrainer's generation-with-tools loop.
2. step     - full RL step (rollouts + old log-probs + policy update): Metis HDPO (Lightning), TRL
              GRPOTrainer; per-part breakdown.

Metis as it was at an older commit is measured by running that commit's own copy of this
benchmark in a git worktree: ``bash bench/before.sh <commit> [arguments]`` (bench/README.md).
3. scaling  - Metis HDPO step time vs group size (4, 8, 16, 32), tool turns (1..5) and image size.
4. sft      - bench/sft_throughput.py (another engineer's): SFT tokens/s with and without
              length-aware batching.
Peak memory: the RSS increase during each measured region (psutil, sampled every 5 ms).

Writes bench/results/rl_bench.{json,md} and one CSV per table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from bench.common import (CACHE, PeakRSS, ScriptedToolCalls, Timers, fresh_copy, install_forcer,  # noqa: E402
                          load_tiny, make_tasks, median, no_refill, python_toolbox, warm_pool)

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 1  # torch intra-op threads (--threads)
FREE_TOKENS = 48
MAX_NEW = 64  # per turn (the scripted turns are shorter)
MIXED = [1, 2, 3]


def have_trl() -> bool:
    try:
        import trl  # noqa: F401
        return True
    except ImportError:
        return False


# ---- Metis -----------------------------------------------------------------------------------------

def metis_loop(model, processor, toolbox, forcer, max_turns: int, timers: Timers | None = None):
    from metis.agent.engines import HFEngine
    from metis.agent.loop import AgentLoop, RolloutConfig

    cfg = RolloutConfig(max_turns=max_turns, max_new_tokens=MAX_NEW, max_response_tokens=2048, tool_workers=8)
    engine = HFEngine(logits_processors=[forcer])
    engine.bind(model, processor)
    loop = AgentLoop(engine, toolbox, processor, cfg)
    if timers is not None:
        timers.wrap(engine, "generate", "generation")
        timers.wrap(loop, "_call_tool", "tools")
    return loop


def rollout_once(kind: str, ctx: dict, tasks, n: int) -> dict:
    toolbox, timers = ctx["toolbox"], ctx["timers"][kind]
    warm_pool(toolbox)
    timers.reset()
    torch.manual_seed(0)
    pool = toolbox.tools["python"].pool
    spawned = pool.spawned
    with no_refill(toolbox), PeakRSS() as mem:
        t0 = time.perf_counter()
        wait0 = getattr(ctx["loops"].get(kind), "stats", {}).get("tool_wait_s", 0.0)
        if kind == "metis":
            trajs = ctx["loops"][kind].run(tasks, n=n)
            res = {"model_tokens": sum(sum(t.response_mask) for t in trajs), "trajectories": len(trajs),
                   "tool_calls": sum(t.num_tool_calls for t in trajs),
                   "prompt_tokens": sum(len(t.prompt_ids) for t in trajs) / len(trajs)}
        elif kind == "naive":
            from bench.peers import naive_rollouts

            res = naive_rollouts(ctx["models"]["naive"], ctx["processor"], toolbox, tasks, n, max(MIXED) + 3,
                                 MAX_NEW, timers)
        else:
            res = ctx["trl"].rollout(tasks, n)
        wall = time.perf_counter() - t0
        cold = pool.spawned - spawned  # interpreters started inside the timed region (pool ran dry)
    t_refill = time.perf_counter()
    warm_pool(toolbox)  # restarting the interpreters this rollout used: off the clock, reported apart
    refill = time.perf_counter() - t_refill
    tools = timers.total.get("tools", 0.0)
    # the loop's own measure of time blocked on tools (Metis overlaps calls with decoding); the
    # other loops call tools inline, so all their tool time blocks
    blocked = getattr(ctx["loops"].get(kind), "stats", {}).get("tool_wait_s", wait0 + tools) - wait0
    res.update(wall_s=wall, tokens_per_s=res["model_tokens"] / wall, traj_per_s=res["trajectories"] / wall,
               generation_s=timers.total.get("generation", 0.0), tools_s=tools, tools_blocking_s=blocked,
               tool_share=blocked / wall, peak_rss_delta_mb=mem.delta_mb, pool_refill_s=refill,
               cold_starts=cold)
    return res


def section_rollout(args, model, processor, model_dir) -> list[dict]:
    toolbox = python_toolbox(pool_size=max(args.groups) * len(MIXED))
    forcer = ScriptedToolCalls(processor.tokenizer, free_tokens=FREE_TOKENS)
    kinds = ["metis", "naive"] + (["trl"] if have_trl() else [])
    ctx = {"toolbox": toolbox, "processor": processor, "timers": {k: Timers() for k in kinds},
           "models": {k: fresh_copy(model) for k in kinds}, "loops": {}}
    ctx["loops"]["metis"] = metis_loop(ctx["models"]["metis"], processor, toolbox, forcer, max(MIXED) + 3,
                                       timers=ctx["timers"]["metis"])
    install_forcer(ctx["models"]["naive"], forcer)
    tasks = make_tasks(MIXED)
    if "trl" in kinds:
        from bench.peers import TRLPeer

        ctx["trl"] = TRLPeer(ctx["models"]["trl"], model_dir, toolbox, forcer, group_size=8,
                             batch_prompts=len(MIXED), max_completion_length=320, timers=ctx["timers"]["trl"])
        ctx["trl"].build(tasks)
    rows = []
    try:
        for kind in kinds:  # warm-up: allocator, kernels, the TRL shared interpreter
            rollout_once(kind, ctx, tasks[:1], 2)
        for n in args.groups:
            runs: dict[str, list[dict]] = {k: [] for k in kinds}
            for rep in range(args.repeats):  # interleaved, so load changes hit every contender alike
                for kind in kinds:
                    r = rollout_once(kind, ctx, tasks, n)
                    runs[kind].append(r)
                    log(f"rollout G={n} rep={rep} {kind}: {r['wall_s']:.2f}s {r['tokens_per_s']:.0f} tok/s")
            for kind in kinds:
                med = {k: median([r[k] for r in runs[kind]]) for k in runs[kind][0] if k != "prompt_tokens"}
                med["prompt_tokens"] = runs[kind][0].get("prompt_tokens", float("nan"))
                rows.append({"group_size": n, "contender": kind, **med, "repeats": len(runs[kind]),
                             "wall_s_all": [round(r["wall_s"], 3) for r in runs[kind]]})
    finally:
        toolbox.close()
    return rows


# ---- RL step -----------------------------------------------------------------------------------------

def hdpo_steps(model, processor, toolbox, forcer, tasks, group_size: int, steps: int, max_turns: int = 6) -> dict:
    """``steps`` HDPO steps through Lightning; per-step wall time and per-part breakdown (medians)."""
    import lightning as L

    from metis.agent.loop import RolloutConfig
    from metis.data.prompts import PromptDataModule
    from metis.modules.rl import RLModule
    from metis.rl.scheme import PolicyLoss, RewardScheme

    timers = Timers()
    cfg = RolloutConfig(max_turns=max_turns, max_new_tokens=MAX_NEW, max_response_tokens=2048, tool_workers=8)
    from metis.agent.engines import HFEngine

    module = RLModule(model, processor, HFEngine(logits_processors=[forcer]), toolbox, RewardScheme("hdpo"),
                        PolicyLoss(clip_low=0.2, clip_high=0.28), cfg, group_size=group_size,
                      micro_batch_tokens=16384, lr=1e-4, grad_cosine_every=0, rollout_log_dir=None)
    module.teardown = lambda stage: None  # the toolbox (and its warm pool) is shared by the runs: closed by the caller
    timers.wrap(module.agent.engine, "generate", "generation")
    timers.wrap(module.agent, "_call_tool", "tools")
    timers.wrap(module, "_logprobs", "old_logprobs")
    timers.wrap(module, "_minibatch_loss", "update")
    timers.wrap(module, "manual_backward", "backward")
    step_times: list[float] = []
    parts: list[dict] = []
    mems: list[float] = []
    threads: list[int] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            warm_pool(toolbox)  # the interpreter pool refills between steps (steady state)
            self.paused = no_refill(toolbox)
            self.paused.__enter__()
            threads.append(torch.get_num_threads())
            torch.set_num_threads(THREADS)  # the same for every contender, whatever the trainer set
            timers.reset()
            self.mem = PeakRSS().__enter__()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step_times.append(time.perf_counter() - self.t0)
            self.mem.__exit__(None, None, None)
            mems.append(self.mem.delta_mb)
            self.paused.__exit__(None, None, None)
            parts.append(dict(timers.total))

    dm = PromptDataModule(lambda: {"train": list(tasks), "val": []}, prompts_per_step=len(tasks))
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[StepTimer()])
    torch.manual_seed(0)
    trainer.fit(module, datamodule=dm)
    out = _step_summary(step_times, parts, mems)
    out["threads_found"] = max(threads) if threads else 0
    return out


def _step_summary(step_times, parts, mems, skip: int = 1) -> dict:
    times, parts, mems = step_times[skip:] or step_times, parts[skip:] or parts, mems[skip:] or mems
    out = {"step_s": median(times), "steps": len(times), "step_s_all": [round(t, 3) for t in times],
           "peak_rss_delta_mb": median(mems)}
    for key in ("generation", "tools", "old_logprobs", "update", "backward", "logprob_forward"):
        out[key + "_s"] = median([p.get(key, 0.0) for p in parts])
    if "update_s" in out and out["update_s"]:
        out["update_forward_s"] = max(0.0, out["update_s"] - out["backward_s"])
    return out


def trl_steps(model, model_dir, toolbox, forcer, tasks, group_size: int, steps: int) -> dict:
    from bench.peers import TRLPeer

    timers = Timers()
    peer = TRLPeer(model, model_dir, toolbox, forcer, group_size=group_size, batch_prompts=len(tasks),
                   max_completion_length=320, steps=steps, timers=timers)
    peer.build(tasks, steps=steps)
    step_times, parts, mems, threads = [], [], [], []
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            warm_pool(toolbox)
            self.paused = no_refill(toolbox)
            self.paused.__enter__()
            threads.append(torch.get_num_threads())
            torch.set_num_threads(THREADS)  # accelerate may have changed it
            timers.reset()
            self.mem = PeakRSS().__enter__()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)
            self.mem.__exit__(None, None, None)
            mems.append(self.mem.delta_mb)
            self.paused.__exit__(None, None, None)
            p = dict(timers.total)
            p["update"] = p.get("logprob_forward", 0.0) + p.get("backward", 0.0)
            parts.append(p)

    peer.trainer.add_callback(StepTimer())
    torch.manual_seed(0)
    peer.trainer.train()
    out = _step_summary(step_times, parts, mems)
    out["update_forward_s"] = out["logprob_forward_s"]
    out["threads_found"] = max(threads) if threads else 0
    return out


def step_worker(args, model, processor, model_dir) -> dict:
    """One contender's RL steps in this (fresh) process: prints ``RESULT {json}``."""
    forcer = ScriptedToolCalls(processor.tokenizer, free_tokens=FREE_TOKENS)
    tasks = make_tasks(MIXED)
    kind = args.worker_step
    toolbox = python_toolbox(pool_size=2 if kind == "trl" else args.step_group * len(tasks))
    try:
        settle(toolbox)
        if kind == "trl":
            r = trl_steps(fresh_copy(model), model_dir, toolbox, forcer, tasks, args.step_group, args.steps + 1)
        else:
            r = hdpo_steps(fresh_copy(model), processor, toolbox, forcer, tasks, args.step_group, args.steps + 1)
    finally:
        toolbox.close()
    print("RESULT " + json.dumps(r), flush=True)
    return r


def settle(toolbox, seconds: float = 2.0) -> None:
    """Wait for the interpreter pool to be full and quiet: a refill in progress (sandboxed Pythons
    starting up) takes CPU and GIL time from whatever runs beside it."""
    warm_pool(toolbox)
    time.sleep(seconds)


def section_step(args, model, processor, model_dir) -> list[dict]:
    """Each contender's run in a fresh process (no state carried over from another contender),
    contenders interleaved round by round."""
    kinds = ["metis"] + (["trl"] if have_trl() else [])
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for rnd in range(args.step_rounds):
        for kind in kinds:
            cmd = [sys.executable, __file__, "--worker-step", kind, "--steps", str(args.steps),
                   "--step-group", str(args.step_group), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=str(Path(__file__).resolve().parents[1]))
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                raise RuntimeError(f"step worker {kind} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
            r = json.loads(lines[-1][len("RESULT "):])
            runs[kind].append(r)
            log(f"step round={rnd} {kind}: {r['step_s']:.2f}s/step {r['step_s_all']}")
    rows = []
    for kind in kinds:
        keys = [k for k in runs[kind][0] if isinstance(runs[kind][0][k], (int, float))]
        med = {k: median([r[k] for r in runs[kind]]) for k in keys}
        med["step_s_all"] = [t for r in runs[kind] for t in r["step_s_all"]]
        med["step_s"] = median(med["step_s_all"])
        rollouts = args.step_group * len(MIXED)
        rows.append({"contender": kind, "group_size": args.step_group, "prompts": len(MIXED), **med,
                     "rollouts_per_s": rollouts / med["step_s"]})
    return rows


def section_scaling(args, model, processor, model_dir) -> list[dict]:
    from metis.models.loading import load_processor

    forcer = ScriptedToolCalls(processor.tokenizer, free_tokens=FREE_TOKENS)
    # the tiny processor caps images at 65,536 pixels (256x256); the resolution axis lifts the cap
    big = load_processor(model_dir, min_pixels=4096, max_pixels=1024 * 1024)
    toolbox = python_toolbox(pool_size=max(args.scale_groups))
    rows = []
    grid = [("group_size", g, 2, 224, g) for g in args.scale_groups]
    grid += [("turns", k, k, 224, 8) for k in args.scale_turns]
    grid += [("image_size", s, 2, s, 8) for s in args.scale_images]
    try:
        for axis, value, turns, size, group in grid:
            proc = big if axis == "image_size" else processor
            settle(toolbox)
            tasks = make_tasks([turns], image_size=size)
            image_tokens = proc(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=tasks[0].images,
                                return_tensors="pt")["input_ids"].shape[1] - 2
            r = hdpo_steps(fresh_copy(model), proc, toolbox, forcer, tasks, group, args.steps + 1, max_turns=turns + 1)
            r.update(axis=axis, value=value, group_size=group, turns=turns, image_size=size, image_tokens=image_tokens)
            rows.append(r)
            log(f"scaling {axis}={value}: {r['step_s']:.2f}s/step gen {r['generation_s']:.2f} "
                f"tools {r['tools_s']:.2f} oldlp {r['old_logprobs_s']:.2f} update {r['update_s']:.2f}")
    finally:
        toolbox.close()
    return rows


def section_sft(args) -> list[dict]:
    script = Path(__file__).resolve().parent / "sft_throughput.py"
    if not script.exists():
        return [{"mode": "n/a", "note": "bench/sft_throughput.py not present"}]
    import psutil

    cmd = [sys.executable, str(script), "--repeats", "1" if args.quick else "2", "--rows", "64" if args.quick else "128",
           "--threads", str(THREADS)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out = proc.stdout.read()
    data = json.loads(out[out.index("{"):])
    return [{"mode": mode, **r, "process_peak_rss_mb": peak / 2**20} for mode, r in data["results"].items()]


# ---- output ------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def md_table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


TABLES = {
    "rollout": ["group_size", "contender", "tokens_per_s", "traj_per_s", "wall_s", "model_tokens", "generation_s",
                "tools_s", "tools_blocking_s", "tool_share", "cold_starts", "pool_refill_s", "prompt_tokens", "peak_rss_delta_mb",
                "repeats"],
    "step": ["contender", "group_size", "prompts", "step_s", "rollouts_per_s", "generation_s", "tools_s",
             "old_logprobs_s", "update_forward_s", "backward_s", "peak_rss_delta_mb", "steps", "threads_found"],
    "scaling": ["axis", "value", "group_size", "turns", "image_size", "image_tokens", "step_s", "generation_s", "tools_s",
                "old_logprobs_s", "update_forward_s", "backward_s", "peak_rss_delta_mb"],
    "sft": ["mode", "tokens_per_s", "speedup_vs_random", "process_peak_rss_mb"],
}


def ratios(results: dict) -> list[str]:
    out = []
    roll = {(r["group_size"], r["contender"]): r for r in results.get("rollout", [])}
    for g in sorted({k[0] for k in roll}):
        m = roll.get((g, "metis"))
        for peer in ("naive", "trl"):
            p = roll.get((g, peer))
            if m and p:
                out.append(f"rollout G={g}: Metis / {peer} = {m['tokens_per_s'] / p['tokens_per_s']:.2f}x tokens/s "
                           f"({m['traj_per_s'] / p['traj_per_s']:.2f}x trajectories/s)")
        if m:
            out.append(f"rollout G={g}: Metis waits on tools {100 * m['tool_share']:.1f}% of the rollout wall time "
                       f"(tool calls take {100 * m['tools_s'] / m['wall_s']:.1f}% in sum, mostly overlapped)")
    step = {r["contender"]: r for r in results.get("step", [])}
    for peer in ("trl",):
        if "metis" in step and peer in step:
            out.append(f"RL step: Metis / {peer} = {step[peer]['step_s'] / step['metis']['step_s']:.2f}x steps/s")
    sc = [r for r in results.get("scaling", []) if r["axis"] == "group_size"]
    if len(sc) > 1:
        base = sc[0]
        for r in sc[1:]:
            out.append(f"group size {base['value']}->{r['value']} ({r['value'] / base['value']:.0f}x rollouts): "
                       f"step time {r['step_s'] / base['step_s']:.2f}x")
    return out


def write(results: dict, meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rl_bench.json").write_text(json.dumps({"meta": meta, **results}, indent=1, default=str))
    md = [f"# RL benchmark ({meta['when']}, {meta['machine']})", ""]
    if meta.get("kept_from_earlier_run"):
        md += [f"(sections kept from an earlier run: {meta['kept_from_earlier_run']})", ""]
    for name, cols in TABLES.items():
        rows = results.get(name)
        if not rows:
            continue
        with open(RESULTS / f"{name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        md += [f"## {name}", "", md_table(rows, cols), ""]
    md += ["## ratios", ""] + [f"- {r}" for r in ratios(results)] + [""]
    (RESULTS / "rl_bench.md").write_text("\n".join(md))
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="rollout,step,scaling,sft")
    ap.add_argument("--quick", action="store_true", help="smaller grid, 1 repeat (a smoke run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="measured RL steps per run (after one warm-up step)")
    ap.add_argument("--step-rounds", type=int, default=2)
    ap.add_argument("--step-group", type=int, default=8)
    ap.add_argument("--worker-step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for every contender (default 1: on a shared 2-core machine two "
                         "OpenMP threads spin-wait on each other and run ~10-30x slower; the tool sandboxes get the "
                         "other core)")
    args = ap.parse_args()
    args.groups = [8, 16]
    args.scale_groups, args.scale_turns, args.scale_images = [4, 8, 16, 32], [1, 2, 3, 4, 5], [224, 448, 672, 896]
    if args.quick:
        args.repeats, args.step_rounds, args.steps = 1, 1, 1
        args.groups, args.scale_groups, args.scale_turns, args.scale_images = [8], [4, 8], [1, 3], [224, 448]
    global THREADS, RESULTS
    THREADS = args.threads
    if args.quick:  # a smoke run never overwrites the measured tables
        RESULTS = RESULTS / "quick"
    torch.set_num_threads(args.threads)
    from metis.models.loading import build_tiny

    model, processor = load_tiny()
    model_dir = str(build_tiny(str(CACHE / "tiny")))
    import transformers

    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}",
            "load_avg_start": os.getloadavg(), "args": vars(args)}
    if have_trl():
        import trl

        meta["trl"] = trl.__version__
    if args.worker_step:
        step_worker(args, model, processor, model_dir)
        return
    results: dict = {}
    sections = args.sections.split(",")
    previous = RESULTS / "rl_bench.json"
    if previous.exists() and not args.quick:  # a partial re-run keeps the other sections' tables
        old = json.loads(previous.read_text())
        results = {k: v for k, v in old.items() if k in TABLES and k not in sections}
        meta["kept_from_earlier_run"] = {k: old.get("meta", {}).get("when") for k in results}
    for name, fn in (("rollout", lambda: section_rollout(args, model, processor, model_dir)),
                     ("step", lambda: section_step(args, model, processor, model_dir)),
                     ("scaling", lambda: section_scaling(args, model, processor, model_dir)),
                     ("sft", lambda: section_sft(args))):
        if name in sections:
            log(f"section {name}")
            results[name] = fn()
            meta["load_avg_end"] = os.getloadavg()
            write(results, meta)


if __name__ == "__main__":
    main()
