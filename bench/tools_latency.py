"""Latency of the python tool: warm pool vs a fresh interpreter per call.

    .venv/bin/python bench/tools_latency.py [--n 30] [--sandbox auto|bwrap|subprocess]

Measures, for a trivial call (``print(1)``) and for a crop of a 1024x1024 input image:
  * warm, same trajectory   - repeated calls on one trajectory's live interpreter
  * warm pool, new traj     - start() + first call + end() per call, interpreter from the pool
                              (the pool is allowed to refill between iterations: steady state)
  * fresh per call          - the same with pool_size=0: an interpreter is started per call
and prints p50 / p95 in milliseconds and the fresh / warm-pool ratio of the p50s.
"""

from __future__ import annotations

import argparse
import statistics
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


def bench(tool: PythonTool, code: str, image: Image.Image, n: int, mode: str) -> list[float]:
    times = []
    if mode == "same":
        tool.start("same", [image])
        tool.call("same", {"code": "pass"})  # attach the interpreter and load the image once
    for i in range(n):
        if mode != "same" and tool.pool.size:
            tool.pool.wait_full(60)  # steady state: the refill happens between rollout turns
        t0 = time.perf_counter()
        traj = "same" if mode == "same" else f"t{i}"
        if mode != "same":
            tool.start(traj, [image])
        obs = tool.call(traj, {"code": code})
        if mode != "same":
            tool.end(traj)
        times.append(time.perf_counter() - t0)
        assert obs.error is None, obs.text
    if mode == "same":
        tool.end("same")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--sandbox", default="auto")
    args = ap.parse_args()
    image = Image.effect_noise((1024, 1024), 64).convert("RGB")
    warm = PythonTool(sandbox=args.sandbox, pool_size=4)
    cold = PythonTool(sandbox=args.sandbox, pool_size=0)
    print(f"sandbox mode: {warm.mode}; n = {args.n} per row; times in ms")
    print(f"{'call':<12} {'setting':<24} {'p50':>8} {'p95':>8}")
    ratios = {}
    for label, code in CODES.items():
        rows = {"warm, same trajectory": bench(warm, code, image, args.n, "same"),
                "warm pool, new traj": bench(warm, code, image, args.n, "pool"),
                "fresh per call": bench(cold, code, image, args.n, "fresh")}
        for setting, times in rows.items():
            print(f"{label:<12} {setting:<24} {1e3 * pct(times, .5):8.1f} {1e3 * pct(times, .95):8.1f}")
        ratios[label] = statistics.median(rows["fresh per call"]) / \
            statistics.median(rows["warm pool, new traj"])
    for label, ratio in ratios.items():
        print(f"{label}: fresh / warm-pool p50 = {ratio:.1f}x")
    warm.close()
    cold.close()


if __name__ == "__main__":
    main()
