"""cProfile of one RL step (after a warm-up step) on the benchmark's setup.

    bench/.venv/bin/python bench/profile_step.py [--contender metis|trl] [--group 8]

Writes bench/results/profile_<contender>.txt (top functions by cumulative and by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import bench.rl_bench as rb  # noqa: E402
from bench.common import (CACHE, ScriptedToolCalls, fresh_copy, load_tiny, make_tasks, python_toolbox,  # noqa: E402
                          warm_pool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contender", default="metis", choices=["metis", "trl"])
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rb.THREADS = args.threads
    model, processor = load_tiny()
    forcer = ScriptedToolCalls(processor.tokenizer, free_tokens=rb.FREE_TOKENS)
    tasks = make_tasks(rb.MIXED)
    toolbox = python_toolbox(pool_size=args.group * len(tasks))
    prof = cProfile.Profile()
    state = {"step": 0}

    # profile only the second step: from the timers' reset (after the pool wait) to the end of the
    # step's memory sampling (the step's end)
    orig_reset, orig_exit = rb.Timers.reset, rb.PeakRSS.__exit__

    def reset(self):
        orig_reset(self)
        state["step"] += 1
        if state["step"] == 2:
            prof.enable()

    def mem_exit(self, *exc):
        if state["step"] == 2:
            prof.disable()
        return orig_exit(self, *exc)

    rb.Timers.reset = reset
    rb.PeakRSS.__exit__ = mem_exit
    try:
        if args.contender == "trl":
            from metis.models.loading import build_tiny

            res = rb.trl_steps(fresh_copy(model), str(build_tiny(str(CACHE / "tiny"))), toolbox, forcer, tasks,
                               args.group, 3)
        else:
            res = rb.hdpo_steps(fresh_copy(model), processor, toolbox, forcer, tasks, args.group, 3)
    finally:
        prof.disable()
        warm_pool(toolbox, 5)
        toolbox.close()
    out = io.StringIO()
    out.write(f"# {args.contender}: one RL step profiled (G={args.group} x {len(tasks)} prompts); "
              f"step times {res['step_s_all']}\n\n## by cumulative time\n")
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(args.top)
    out.write("\n## by own time\n")
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
    rb.RESULTS.mkdir(parents=True, exist_ok=True)
    path = rb.RESULTS / f"profile_{args.contender}.txt"
    path.write_text(out.getvalue())
    print(out.getvalue())
    print(f"written to {path}")


if __name__ == "__main__":
    main()
