"""``ToolBox``: the set of tools a run uses (conf/tools/*.yaml), and the only entry point the
rollout loop calls. ``execute`` never raises: every failure becomes an ``Observation`` with an
error kind (parse_error, unknown_tool, execution_error, timeout, refused, limit).

Deliberate simplifications: metrics keep the latest 10,000 latencies per tool (percentiles are
nearest-rank over those); the per-trajectory call limit counts every call, including failed and
refused ones, like T_i in docs/paper.md ("HDPO").
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from PIL import Image

from metis.tools.base import (ERROR_KINDS, IMAGE_PLACEHOLDER, Observation, Tool,
                              error_observation, validate_arguments)

log = logging.getLogger("metis.tools")
TRUNCATION_MARKER = "\n[... observation truncated: {n} characters removed]"


def truncate_observation(obs: Observation, max_chars: int) -> Observation:
    """Cut ``obs.text`` to ``max_chars`` without splitting an ``<image>`` placeholder; keep the
    images whose placeholders survive (placeholders and images stay in the same order)."""
    text, images = obs.text, list(obs.images)
    if text.count(IMAGE_PLACEHOLDER) != len(images):  # repair a tool's inconsistency first
        keep = min(text.count(IMAGE_PLACEHOLDER), len(images))
        parts = text.split(IMAGE_PLACEHOLDER)
        text = "".join(p + (IMAGE_PLACEHOLDER if i < keep else "[image]")
                       for i, p in enumerate(parts[:-1])) + parts[-1]
        images = images[:keep]
    if len(text) > max_chars:
        removed = len(text)
        cut = max(0, max_chars - len(TRUNCATION_MARKER.format(n=len(text))))
        head = text[:cut]
        for k in range(1, len(IMAGE_PLACEHOLDER)):  # a placeholder cut in half is dropped whole
            if cut >= k and head.endswith(IMAGE_PLACEHOLDER[:k]) and \
                    text[cut - k: cut - k + len(IMAGE_PLACEHOLDER)] == IMAGE_PLACEHOLDER:
                head = head[:-k]
                break
        removed -= len(head)
        text = head + TRUNCATION_MARKER.format(n=removed)
        images = images[: head.count(IMAGE_PLACEHOLDER)]
    return Observation(text=text, images=images, error=obs.error, latency_s=obs.latency_s)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, cut to 2,000 characters; never raises (a hostile
    ``__str__`` or a message too large to format still gives the type)."""
    try:
        return f"{type(exc).__name__}: {str(exc)[:2000]}"[:2000]
    except Exception:  # noqa: BLE001
        return type(exc).__name__


class _Stats:
    def __init__(self) -> None:
        self.calls = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.latencies: collections.deque[float] = collections.deque(maxlen=10_000)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, max(0, math.ceil(q * len(lat)) - 1))] if lat else 0.0

        return {"calls": self.calls, "failures": sum(self.errors.values()),
                "errors": dict(self.errors), "latency_p50_s": pct(0.50),
                "latency_p95_s": pct(0.95)}


class ToolBox:
    """Routes calls by name, enforces the per-trajectory call limit, truncates observations."""

    def __init__(self, tools: Iterable[Tool] = (), max_calls_per_trajectory: int = 10,
                 max_observation_chars: int = 8192) -> None:
        self.tools: dict[str, Tool] = {}
        for tool in list(tools or []):
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self.max_calls = int(max_calls_per_trajectory)
        self.max_chars = int(max_observation_chars)
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stats: dict[str, _Stats] = collections.defaultdict(_Stats)

    def specs(self) -> list[dict]:
        return [tool.spec() for tool in self.tools.values()]

    def names(self) -> list[str]:
        return list(self.tools)

    def start(self, traj_id: str, images: list[Image.Image] | None = None,
              meta: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            self._counts[traj_id] = 0
        for tool in self.tools.values():
            try:
                if meta is None:
                    tool.start(traj_id, list(images or []))
                else:
                    tool.start(traj_id, list(images or []), meta=meta)
            except Exception as exc:  # noqa: BLE001 - a later call reports the failure
                log.error("tool %s failed to start trajectory %s: %s", tool.name, traj_id, exc)

    def execute(self, traj_id: str, name: Any, arguments: Any) -> Observation:
        """Run one call; never raises."""
        t0 = time.monotonic()
        try:
            obs, key = self._execute(traj_id, name, arguments)
        except BaseException as exc:  # noqa: BLE001 - the contract is "never raises"
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            obs, key = error_observation("execution_error", f"Tool error: {_describe(exc)}"), "_toolbox"
        obs.latency_s = obs.latency_s or (time.monotonic() - t0)
        with self._lock:
            stats = self._stats[key]
            stats.calls += 1
            stats.latencies.append(time.monotonic() - t0)
            if obs.error:
                stats.errors[obs.error] += 1
        return obs

    def _execute(self, traj_id: str, name: Any, arguments: Any) -> tuple[Observation, str]:
        with self._lock:
            count = self._counts.get(traj_id, 0) + 1
            self._counts[traj_id] = count
        if count > self.max_calls:
            return error_observation("limit", f"Tool call limit reached: at most {self.max_calls} "
                                     "tool calls per question. Answer with what you have."), "_toolbox"
        tool = self.tools.get(name) if isinstance(name, str) else None
        if tool is None:
            avail = ", ".join(self.tools) or "(none)"
            shown = repr(name)[:100]
            return error_observation("unknown_tool", f"Unknown tool {shown}. Available tools: "
                                     f"{avail}."), "_toolbox"
        problem = validate_arguments(arguments, tool.parameters)
        if problem is not None:
            return error_observation("parse_error", f"Invalid arguments for {tool.name}: "
                                     f"{problem}."), tool.name
        try:
            obs = tool.call(traj_id, arguments)
            if not isinstance(obs, Observation):
                raise TypeError(f"{tool.name}.call returned {type(obs).__name__}")
            if obs.error is not None and obs.error not in ERROR_KINDS:
                obs.error = "execution_error"
        except Exception as exc:  # noqa: BLE001
            log.exception("tool %s raised", tool.name)
            obs = error_observation("execution_error", f"Tool {tool.name} failed: {_describe(exc)}")
        return truncate_observation(obs, self.max_chars), tool.name

    def end(self, traj_id: str) -> None:
        with self._lock:
            self._counts.pop(traj_id, None)
        for tool in self.tools.values():
            try:
                tool.end(traj_id)
            except Exception as exc:  # noqa: BLE001
                log.error("tool %s failed to end trajectory %s: %s", tool.name, traj_id, exc)

    def close(self) -> None:
        for tool in self.tools.values():
            try:
                tool.close()
            except Exception as exc:  # noqa: BLE001
                log.error("tool %s failed to close: %s", tool.name, exc)

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per tool (and "_toolbox" for calls no tool got): calls, failures, errors by kind,
        latency p50/p95 in seconds."""
        with self._lock:
            return {name: stats.summary() for name, stats in self._stats.items()}

    def reset_metrics(self) -> None:
        with self._lock:
            self._stats.clear()

    def __enter__(self) -> ToolBox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
