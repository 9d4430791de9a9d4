"""Shared parts of the RL benchmark: the tiny model, the prompts, the scripted tool-call policy,
the Python tool, timers and a memory sampler. Every contender (Metis, the naive loop, TRL) gets
exactly these.

The scripted policy: a random tiny model never writes a tool call, so a logits processor forces
the *content* of the first ``k`` assistant turns to be a fixed Python tool call, then lets the model
generate freely for ``free_tokens - 1`` tokens and closes the turn with ``<|im_end|>``. It is
stateless (it reads everything it needs from the token ids it is given), so it behaves the same
under batched, unbatched, cached and uncached generation and in TRL's loop:

* turn index = number of ``</tool_call>`` tokens between the first ``<|im_start|>assistant`` header
  and the current turn's header (finished tool-call turns);
* position in the turn = tokens after the last ``<|im_start|>`` header;
* ``k`` = the number in the ``(k=N)`` marker at the end of the user question.

During the free turn ``<tool_call>``, ``</tool_call>``, ``<|im_end|>`` (until the last position) and
the vision/turn tokens are banned, so every contender generates the same number of tokens.
"""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("METIS_BENCH_CACHE", "/tmp/metis-bench-cache"))

TOOL_CODE = "print(6*7)"
CALL_TEXT = ('<reason>compute</reason><tool_call>\n{"name": "python", "arguments": {"code": "'
             + TOOL_CODE + '"}}\n</tool_call>')
FORBIDDEN = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>",
             "<|endoftext|>")


def load_tiny(dtype: str = "float32"):
    from metis.models import build_policy

    model, processor = build_policy(tiny={}, cache_dir=str(CACHE / "tiny"), dtype=dtype, attn_implementation="sdpa")
    return model, processor


def fresh_copy(model):
    """An independent copy of the tiny model with the same weights (each contender trains its own)."""
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    copy.train()
    return copy


def make_image(size: int, seed: int = 0) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(img).text((size // 10, size // 2), f"{6 + seed} x 7", fill=(0, 0, 0))
    return img


def make_tasks(turns: list[int], image_size: int = 224):
    """One prompt per entry of ``turns``; prompt ``i`` is scripted to make ``turns[i]`` tool calls."""
    from metis.core.task import Task

    return [Task(id=f"bench-{i}", question=f"<image>What is {6 + i} * 7? (k={k})",
                 images=[make_image(image_size, i)], answer=str((6 + i) * 7), verifier="numeric",
                 needs_tool=True) for i, k in enumerate(turns)]


class ScriptedToolCalls:
    """A ``LogitsProcessor``: forced tool-call turns, then one free turn of ``free_tokens`` tokens."""

    def __init__(self, tokenizer, free_tokens: int = 48, call_text: str = CALL_TEXT, window: int = 16) -> None:
        vocab = tokenizer.get_vocab()
        self.im_start, self.im_end = vocab["<|im_start|>"], vocab["<|im_end|>"]
        self.call_end = vocab["</tool_call>"]
        header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.header_second, self.header_len = header[1], len(header)
        self.call_ids = tokenizer.encode(call_text, add_special_tokens=False) + [self.im_end]
        self.free_tokens = free_tokens
        self.banned = sorted({vocab[t] for t in FORBIDDEN if t in vocab} | {vocab["<tool_call>"], self.call_end,
                                                                            self.im_end})
        self.tokenizer, self.window = tokenizer, window
        self._k: dict[tuple[int, ...], int] = {}

    def turns_for(self, window_ids: tuple[int, ...]) -> int:
        k = self._k.get(window_ids)
        if k is None:
            m = re.findall(r"\(k=(\d+)\)", self.tokenizer.decode(list(window_ids)))
            k = self._k[window_ids] = int(m[-1]) if m else 0
        return k

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = input_ids
        batch, length = ids.shape
        is_start = ids == self.im_start
        header = torch.zeros_like(is_start)
        header[:, :-1] = is_start[:, :-1] & (ids[:, 1:] == self.header_second)
        first = header.int().argmax(1)  # first assistant header of each row
        last = length - 1 - is_start.flip(1).int().argmax(1)
        pos = (length - (last + self.header_len)).tolist()
        ends = (ids == self.call_end).int().cumsum(1)
        turn = (ends.gather(1, last[:, None]) - ends.gather(1, first[:, None])).squeeze(1).tolist()
        first = first.tolist()
        out = scores.clone()
        for r in range(batch):
            lo = max(0, first[r] - self.window)
            k = self.turns_for(tuple(ids[r, lo:first[r]].tolist()))
            if turn[r] < k:
                tok = self.call_ids[min(pos[r], len(self.call_ids) - 1)]
            elif pos[r] >= self.free_tokens - 1:
                tok = self.im_end
            else:
                out[r, self.banned] = -float("inf")
                continue
            out[r] = -float("inf")
            out[r, tok] = 0.0
        return out


def install_forcer(model, forcer) -> None:
    """Route every ``model.generate`` call through the scripted policy (naive loop, TRL, old engine)."""
    from transformers import LogitsProcessorList

    orig = type(model).generate.__get__(model)

    def generate(*args, **kwargs):
        procs = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        procs.append(forcer)
        return orig(*args, logits_processor=procs, **kwargs)

    model.generate = generate


def python_toolbox(pool_size: int = 8):
    """The real sandboxed Python tool, as conf/tools/python_only.yaml builds it."""
    from metis.tools.python_tool import PythonTool
    from metis.tools.toolbox import ToolBox

    return ToolBox([PythonTool(timeout_s=20, sandbox="auto", pool_size=pool_size)], max_calls_per_trajectory=10)


def warm_pool(toolbox, timeout: float = 300.0) -> None:
    """Wait until the interpreter pool is full of live interpreters (the steady state between RL
    steps): full, then still all alive half a second later (a late uid-based kill of an ended
    trajectory's interpreter can take out a fresh one; the pool then refills)."""
    tool = toolbox.tools.get("python")
    if tool is None or not tool.pool.size:
        return
    pool = tool.pool
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pool.wait_full(max(1.0, deadline - time.monotonic()))
        time.sleep(0.5)
        with pool._cond:
            dead = [i for i in pool._ready if not i.alive]
            if not dead and len(pool._ready) >= pool.size:
                return
            pool._ready = type(pool._ready)(i for i in pool._ready if i.alive)
            pool._cond.notify_all()


@contextmanager
def no_refill(toolbox):
    """Pause the pool's background refill inside a timed region.

    Each trajectory that calls python takes one interpreter from the warm pool; the pool starts a
    replacement at once (~0.5 CPU-s each: a sandboxed Python importing numpy/PIL/matplotlib). In
    training that happens between steps; on a 2-core machine it would otherwise steal the CPU from
    the region being measured. The start-up cost is measured and reported separately.
    """
    tool = toolbox.tools.get("python")
    pool = getattr(tool, "pool", None)
    if pool is None:
        yield
        return
    size = pool.size
    pool.size = 0
    try:
        yield
    finally:
        # Let the reaper stop the interpreters of ended trajectories *before* the refill starts:
        # the sandbox reuses a small set of uids per process and kills by uid, so a refill racing the
        # reaper gets fresh interpreters killed (seen: cold starts inside the next timed region).
        deadline = time.monotonic() + 60
        while not tool._reap_queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.0)  # the last kill may still be running after the queue is empty
        with pool._cond:
            pool.size = size
            pool._cond.notify_all()


# ---- timing -------------------------------------------------------------------------------------

class Timers:
    """Accumulates wall time per named part; ``wrap`` instruments a method in place."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, name: str, dt: float) -> None:
        with self._lock:
            self.total[name] = self.total.get(name, 0.0) + dt
            self.calls[name] = self.calls.get(name, 0) + 1

    @contextmanager
    def time(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def wrap(self, obj, attr: str, name: str | None = None):
        name = name or attr
        orig = getattr(obj, attr)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                self.add(name, time.perf_counter() - t0)

        setattr(obj, attr, timed)
        return orig

    def reset(self) -> None:
        self.total.clear()
        self.calls.clear()


class PeakRSS:
    """Samples the process RSS every few ms; ``peak_mb`` and ``delta_mb`` over the ``with`` block."""

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start = self.peak = self.proc.memory_info().rss
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def set_threads(n: int | None = None) -> None:
    torch.set_num_threads(n or max(1, os.cpu_count() or 1))


def summarize(values: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each numeric key over repeats."""
    keys = values[0].keys()
    out: dict[str, Any] = {}
    for k in keys:
        vs = [v[k] for v in values if isinstance(v.get(k), (int, float))]
        out[k] = median(vs) if vs else values[0][k]
    out["repeats"] = len(values)
    return out
