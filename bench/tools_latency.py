"""Latency and CPU cost of the python tool: a fresh interpreter per trajectory started by its
own bwrap (``fork_server=False``, the old path) vs forked by the fork server (the default as
root), plus the warm paths, in the same run.

    .venv/bin/python bench/tools_latency.py [--n 30] [--sandbox auto|bwrap|subprocess]

Rows, for a trivial call (``print(1)``) and a crop of a 1024x1024 input image:
  * warm, same trajectory   - repeated calls on one trajectory's live interpreter
  * warm pool, new traj     - start() + first call + end(), interpreter from a pool of 4
                              (refilled between iterations: steady state)
  * fresh per call          - the same with pool_size=0: an interpreter is started per call
p50 / p95 wall in ms. Then, per fresh interpreter: CPU seconds of this process and every
process it started (os.times, children included once reaped: the tool is closed to reap them),
minus the same tool's cost with a single interpreter (start-up of bwrap / the zygote).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from metis.tools import PythonTool  # noqa: E402

CODES = {"print(1)": "print(1)", "crop 1024px": "image_1.crop((256, 256, 768, 768))"}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def bench(tool: PythonTool, code: str, image: Image.Image | None, n: int, mode: str) -> list[float]:
    times = []
    images = [image] if image is not None else []
    if mode == "same":
        tool.start("same", images)
        tool.call("same", {"code": "pass"})  # attach the interpreter and load the image once
    for i in range(n):
        if mode != "same" and tool.pool.size:
            tool.pool.wait_full(60)  # steady state: the refill happens between rollout turns
        t0 = time.perf_counter()
        traj = "same" if mode == "same" else f"t{i}"
        if mode != "same":
            tool.start(traj, images)
        obs = tool.call(traj, {"code": code})
        if mode != "same":
            tool.end(traj)
        times.append(time.perf_counter() - t0)
        assert obs.error is None, obs.text
    if mode == "same":
        tool.end("same")
    return times


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def fresh_cost(sandbox: str, fork_server: bool, n: int) -> tuple[list[float], float]:
    """(wall seconds per fresh interpreter's first call, CPU seconds per fresh interpreter)."""
    def run(k: int) -> tuple[list[float], float]:
        c0 = cpu_now()
        tool = PythonTool(sandbox=sandbox, pool_size=0, fork_server=fork_server)
        walls = bench(tool, "print(1)", None, k, "fresh")
        tool.close()
        return walls, cpu_now() - c0
    run(1)  # warm the page cache
    _, base = run(1)
    walls, total = run(n + 1)
    return walls[1:], (total - base) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--sandbox", default="auto")
    args = ap.parse_args()
    image = Image.effect_noise((1024, 1024), 64).convert("RGB")
    print(f"n = {args.n} per row; times in ms")
    print(f"{'start-up':<13} {'call':<12} {'setting':<24} {'p50':>8} {'p95':>8}")
    for fork_server in (False, True):
        warm = PythonTool(sandbox=args.sandbox, pool_size=4, fork_server=fork_server)
        cold = PythonTool(sandbox=args.sandbox, pool_size=0, fork_server=fork_server)
        label = "fork server" if warm.zygote is not None else f"own {warm.mode}"
        for name, code in CODES.items():
            rows = {"warm, same trajectory": bench(warm, code, image, args.n, "same"),
                    "warm pool, new traj": bench(warm, code, image, args.n, "pool"),
                    "fresh per call": bench(cold, code, image, args.n, "fresh")}
            for setting, times in rows.items():
                print(f"{label:<13} {name:<12} {setting:<24} {1e3 * pct(times, .5):8.1f} "
                      f"{1e3 * pct(times, .95):8.1f}")
        warm.close()
        cold.close()
    print("\nper fresh interpreter (start + first print(1) + end, no image):")
    for fork_server in (False, True):
        walls, cpu = fresh_cost(args.sandbox, fork_server, args.n)
        print(f"  fork_server={fork_server!s:<5}  wall p50 {1e3 * pct(walls, .5):6.1f} ms  "
              f"p95 {1e3 * pct(walls, .95):6.1f} ms  CPU {1e3 * cpu:6.1f} ms")


if __name__ == "__main__":
    main()
