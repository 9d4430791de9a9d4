"""Latency and CPU cost of the python tool: a fresh interpreter per trajectory started by its
own bwrap (``fork_server=False``, the old path) vs forked by the fork server (the default as
root), plus the warm paths, in the same run.

    .venv/bin/python bench/tools_latency.py [--n 30] [--sandbox auto|bwrap|subprocess] [--fresh-only]

Rows (skipped with --fresh-only), for a trivial call (``print(1)``) and a crop of a 1024x1024 input image:
  * warm, same trajectory   - repeated calls on one trajectory's live interpreter
  * warm pool, new traj     - start() + first call + end(), interpreter from a pool of 4
                              (refilled between iterations: steady state)
  * fresh per call          - the same with pool_size=0: an interpreter is started per call
p50 / p95 wall in ms. Then, per fresh interpreter, wall p50/p95 and CPU (see ``fresh_cost``).
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


TICK = os.sysconf("SC_CLK_TCK")
SELF_CPU = "import os\nt = os.times()\nprint('cpu', t.user + t.system)"


def _stat_cpu(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (children count once they are reaped)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / TICK


def _zygote_pid(tool: PythonTool) -> int:
    """The zygote's python process: the descendant of the tool's bwrap running _zygote.py."""
    todo = [tool.zygote.proc.pid]
    while todo:
        pid = todo.pop()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            if b"_zygote.py" in fh.read():
                return pid
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            todo += [int(c) for c in fh.read().split()]
    raise RuntimeError("no zygote process found")


def fresh_cost(sandbox: str, fork_server: bool, n: int) -> tuple[list[float], float]:
    """(wall seconds per fresh interpreter: start + first call + end; CPU seconds per fresh
    interpreter: this process + the zygote with its reaped children (fork server), or this
    process + what each worker reports for itself, start-up and imports included (own bwrap;
    bwrap's own few ms are not counted)."""
    tool = PythonTool(sandbox=sandbox, pool_size=0, fork_server=fork_server)
    tool.call("warm-up", {"code": "pass"})
    tool.end("warm-up")
    time.sleep(1.0)
    zygote = _zygote_pid(tool) if tool.zygote is not None else None
    own0, z0 = time.process_time(), _stat_cpu(zygote) if zygote else 0.0
    walls, worker_cpu = [], 0.0
    for i in range(n):
        t0 = time.perf_counter()
        tool.start(f"f{i}", [])
        obs = tool.call(f"f{i}", {"code": SELF_CPU})
        tool.end(f"f{i}")
        walls.append(time.perf_counter() - t0)
        if zygote is None:
            worker_cpu += float(obs.text.split("cpu ")[1].split()[0])
    while not tool._reap_queue.empty():
        time.sleep(0.05)
    time.sleep(1.0)  # the last teardown and the zygote's reaping
    cpu = time.process_time() - own0 + (_stat_cpu(zygote) - z0 if zygote else worker_cpu)
    tool.close()
    return walls, cpu / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--sandbox", default="auto")
    ap.add_argument("--fresh-only", action="store_true", help="only the per-fresh-interpreter "
                    "wall and CPU lines (what the rollouts wait for)")
    args = ap.parse_args()
    image = Image.effect_noise((1024, 1024), 64).convert("RGB")
    print(f"n = {args.n} per row; times in ms")
    print(f"{'start-up':<13} {'call':<12} {'setting':<24} {'p50':>8} {'p95':>8}")
    for fork_server in (() if args.fresh_only else (False, True)):
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
