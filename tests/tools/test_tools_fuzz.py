"""3,000 malformed / random tool calls through ToolBox.execute: nothing escapes, every call
becomes an Observation (with an error kind whenever the call is invalid)."""

from __future__ import annotations

import random

from PIL import Image

from metis.tools import (ERROR_KINDS, ImageSearchTool, Observation, PythonTool, TextSearchTool,
                         ToolBox)

NAMES = ["python", "text_search", "image_search", "Python", "python ", "", "text-search",
         "image_search\x00", "工具", "🐍", None, 3, 1.5, ["python"], {"name": "python"}, b"python"]


def junk(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(10 ** 30), 10 ** 30)
    if kind == 3:
        return rng.choice([float("nan"), float("inf"), -0.0, 1e308, rng.random()])
    if kind == 4:
        return "".join(chr(rng.randrange(0x110000 if rng.random() < 0.3 else 0x80))
                       for _ in range(rng.randrange(40))).encode("utf-8", "replace").decode(
            "utf-8", "replace")
    if kind == 5:
        return "x" * rng.choice([0, 1, 10_000, 200_000])
    if kind == 6:
        return rng.choice(["<image>", "<|im_end|>", "\x00\x01", "{\"code\": 1}", "' OR 1=1 --"])
    if kind == 7:
        return b"\xff\xfe bytes"
    if kind in (8, 9):
        out = {}
        for _ in range(rng.randrange(4)):
            key = junk(rng, depth + 1) if rng.random() < 0.3 else rng.choice(["code", "query", "k"])
            out[key if _keyable(key) else str(key)] = junk(rng, depth + 1)
        return out
    if kind == 10:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return (junk(rng, depth + 1), junk(rng, depth + 1))


def _keyable(obj):
    try:
        hash(obj)
        return True
    except TypeError:
        return False


def test_random_calls_never_raise(tmp_path):
    rng = random.Random(1234)
    python = PythonTool(pool_size=1, timeout_s=5)
    box = ToolBox([python, TextSearchTool(cache_path=str(tmp_path / "t.db")),
                   ImageSearchTool(cache_path=str(tmp_path / "i.db"))],
                  max_calls_per_trajectory=10_000, max_observation_chars=2000)
    counts = {kind: 0 for kind in ERROR_KINDS}
    counts["ok"] = 0
    python_runs = 0
    for i in range(3000):
        if i % 500 == 0:
            box.end(f"t{i - 500}")
            box.start(f"t{i}", [Image.new("RGB", (32, 32), "red")] if i % 1000 else [])
        traj = f"t{i - i % 500}" if rng.random() < 0.95 else junk(rng)
        traj = traj if _keyable(traj) else str(traj)
        name = rng.choice(NAMES[:3] if rng.random() < 0.5 else NAMES)
        args = junk(rng)
        if name == "python" and isinstance(args, dict) and isinstance(args.get("code"), str):
            if python_runs >= 15:  # keep real executions few: the point is the parsing surface
                args = {"code": 7}
            python_runs += 1
        obs = box.execute(traj, name, args)
        assert isinstance(obs, Observation)
        assert isinstance(obs.text, str) and len(obs.text) <= 2000
        assert obs.text.count("<image>") == len(obs.images)
        assert obs.error is None or obs.error in ERROR_KINDS
        if name not in ("python", "text_search", "image_search"):
            assert obs.error == "unknown_tool"
        elif not isinstance(args, dict):
            assert obs.error == "parse_error"
        counts[obs.error or "ok"] += 1
    for code in [None, 1, ["print(1)"], "\x00", "print('ok')", "(" * 200, "def f(:\n"]:
        obs = box.execute("t2500", "python", {"code": code})
        assert obs.error in (None, "parse_error", "execution_error"), (code, obs)
    box.close()
    print(counts, "python executions:", min(python_runs, 15))
    assert counts["unknown_tool"] > 800 and counts["parse_error"] > 800, counts
