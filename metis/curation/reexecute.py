"""Stage ``reexecute``: replay every recorded python call in the sandbox and keep faithful trajectories.

Per record, a fresh sandbox trajectory: ``ToolBox.start`` with the record's input images (the
images of the messages before the first assistant turn), then each ``python`` call in order, in
the same interpreter (state carries across calls as it did when the trajectory was recorded). A
record is dropped when

* ``code_failed``: a replayed call ends in an error (exception, timeout, ...);
* ``observation_mismatch_text`` / ``observation_mismatch_image``: the recorded observation differs
  from the re-executed one (:mod:`metis.curation.compare`: normalised text; image count and
  perceptual hashes within a tolerance);
* ``observation_missing``: a tool call has no observation message after it;
* ``tool_not_replayable``: a non-python call, only with ``non_python: drop`` (the default ``keep``
  leaves search calls unchecked and counts them in the details);
* ``too_many_calls``: more calls than the stage's own ``max_calls`` (default 256; the toolbox's
  per-question limit of RL rollouts is raised to it, so every recorded call is replayed).

Before the first batch a probe call checks that the sandbox works at all: a broken sandbox aborts
the stage instead of dropping every record as ``code_failed``.

Deliberate simplifications: images of user turns after the first assistant turn are not loaded into
the interpreter; search calls are not replayed (their results change over time); a record's calls
run sequentially, records of a batch run concurrently (``workers``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import count
from typing import Any

from PIL import Image

from metis.curation.compare import compare_observation, normalize_text
from metis.data.samples import Sample
from metis.curation.runner import Stage, StageAborted
from metis.data.schema import TrajectoryRecord, parts_text

_ids = count()


def split_images(record: TrajectoryRecord) -> tuple[list[Image.Image], list[list[Image.Image]]]:
    """(input images, images of each tool message in order) by walking the image parts."""
    cursor, inputs, per_tool, seen_assistant = 0, [], [], False
    for m in record.messages:
        n = sum(p["type"] == "image" for p in m["content"])
        imgs = record.images[cursor:cursor + n]
        cursor += n
        if m["role"] == "assistant":
            seen_assistant = True
        elif m["role"] == "tool":
            per_tool.append(list(imgs))
        elif not seen_assistant:
            inputs.extend(imgs)
    return inputs, per_tool


class ReexecuteStage(Stage):
    """Replays python calls through a :class:`metis.tools.ToolBox` (conf/tools/python_only.yaml)."""

    name = "reexecute"
    reasons = {
        "code_failed": "a replayed python call raised, timed out or was refused",
        "observation_mismatch_text": "the recorded observation text differs from the re-executed one",
        "observation_mismatch_image": "a recorded observation image differs (count or perceptual hash)",
        "observation_missing": "a tool call is not followed by an observation",
        "tool_not_replayable": "a non-python tool call (non_python=drop)",
        "too_many_calls": "more tool calls than reexecute.max_calls",
    }

    def __init__(self, tools: Any, workers: int = 4, non_python: str = "keep", sig_digits: int = 6,
                 hash_method: str = "phash", hash_size: int = 8, max_hash_distance: int = 10,
                 max_calls: int = 256) -> None:
        if non_python not in ("keep", "drop"):
            raise ValueError(f"reexecute.non_python must be keep or drop, got {non_python!r}")
        if int(max_calls) < 1:
            raise ValueError(f"reexecute.max_calls must be >= 1, got {max_calls}")
        self.tools_cfg, self.workers, self.non_python = tools, max(1, int(workers)), non_python
        self.max_calls = int(max_calls)
        self.cmp = dict(sig_digits=sig_digits, hash_method=hash_method, hash_size=hash_size,
                        max_distance=max_hash_distance)
        self.toolbox: Any = None

    def describe(self) -> dict[str, Any]:
        return {"workers": self.workers, "non_python": self.non_python, "max_calls": self.max_calls, **self.cmp}

    def open(self) -> None:
        if self.toolbox is None:
            import hydra

            if hasattr(self.tools_cfg, "execute"):
                self.toolbox = self.tools_cfg
            else:  # the RL toolbox's per-question call limit is not the data's: replay every recorded call
                self.toolbox = hydra.utils.instantiate(self.tools_cfg, max_calls_per_trajectory=self.max_calls)
            if getattr(self.toolbox, "max_calls", self.max_calls) < self.max_calls:
                self.toolbox.max_calls = self.max_calls
        if "python" not in getattr(self.toolbox, "names", lambda: ["python"])():
            raise StageAborted("reexecute needs the python tool (tools=python_only or tools=all)")
        probe = f"reexecute-probe-{next(_ids)}"
        self.toolbox.start(probe, [])
        try:
            obs = self.toolbox.execute(probe, "python", {"code": "print(6 * 7)"})
        finally:
            self.toolbox.end(probe)
        if obs.error is not None or "42" not in obs.text:
            raise StageAborted(f"the python sandbox does not work ({obs.error}: {obs.text[:300]!r}); "
                               "nothing was dropped -- fix the sandbox (docs/tools.md) and rerun")

    def close(self) -> None:
        if self.toolbox is not None and not hasattr(self.tools_cfg, "execute"):
            self.toolbox.close()
            self.toolbox = None

    def process(self, samples: list[Sample]) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(max_workers=min(self.workers, len(samples))) as pool:
            return list(pool.map(self.replay, samples))

    def replay(self, sample: Sample) -> dict[str, Any]:
        rec = sample.record
        assert rec is not None
        if rec.num_tool_calls > self.max_calls:
            return self._row(rec, "dropped", "too_many_calls", [], {"calls": rec.num_tool_calls, "max_calls": self.max_calls})
        inputs, tool_images = split_images(rec)
        traj_id = f"reexecute/{rec.id}/{next(_ids)}"
        msgs = rec.messages
        calls: list[dict[str, Any]] = []
        n_tool = 0
        self.toolbox.start(traj_id, inputs)
        try:
            for k, m in enumerate(msgs):
                if m["role"] == "tool":
                    n_tool += 1
                call = m.get("tool_call") if m["role"] == "assistant" else None
                if not call:
                    continue
                n = len(calls) + 1
                nxt = msgs[k + 1] if k + 1 < len(msgs) else None
                if nxt is None or nxt["role"] != "tool":
                    return self._row(rec, "dropped", "observation_missing", calls, {"call": n})
                recorded_text, recorded_images = parts_text(nxt["content"]), tool_images[n_tool]
                if call.get("name") != "python":
                    calls.append({"call": n, "tool": call.get("name"), "replayed": False})
                    if self.non_python == "drop":
                        return self._row(rec, "dropped", "tool_not_replayable", calls, {"call": n})
                    continue
                obs = self.toolbox.execute(traj_id, "python", call.get("arguments") or {})
                calls.append({"call": n, "tool": "python", "replayed": True, "error": obs.error})
                if obs.error is not None:
                    return self._row(rec, "dropped", "code_failed", calls,
                                     {"call": n, "error": obs.error, "output": normalize_text(obs.text)[-300:]})
                diff = compare_observation(recorded_text, recorded_images, obs.text, obs.images, **self.cmp)
                if diff is not None:
                    reason = "observation_mismatch_text" if diff.kind == "text" else "observation_mismatch_image"
                    return self._row(rec, "dropped", reason, calls, {"call": n, "kind": diff.kind, **diff.detail})
            return self._row(rec, "kept", None, calls, None)
        finally:
            self.toolbox.end(traj_id)

    @staticmethod
    def _row(rec: TrajectoryRecord, status: str, reason: str | None, calls: list[dict[str, Any]],
             failure: dict[str, Any] | None) -> dict[str, Any]:
        details: dict[str, Any] = {"tool_calls": rec.num_tool_calls,
                                   "replayed": sum(1 for c in calls if c.get("replayed")),
                                   "not_replayed": [c["tool"] for c in calls if not c.get("replayed")]}
        if failure is not None:
            details["failure"] = failure
        return {"id": rec.id, "status": status, "reason": reason, "details": details}

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        done = [r for r in rows if r["status"] in ("kept", "dropped")]
        return {"metrics": {"replayed_calls": sum(r["details"].get("replayed", 0) for r in done),
                            "unreplayed_calls": sum(len(r["details"].get("not_replayed", [])) for r in done)}}
