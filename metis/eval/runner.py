"""Batched, resumable inference over benchmark tasks with the training agent loop.

Each finished sample is appended to a JSON-lines file (one record per task id) as soon as its
batch ends; a rerun reads the file and skips every id that already has a good record, so an
interrupted evaluation picks up where it stopped and nothing finished is recomputed. A batch that
raises is retried task by task; a task that still raises gets an ``error`` record, which a
rerun retries. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metis.core.task import Task

log = logging.getLogger("metis.eval")

MAX_OBSERVATION_CHARS = 2000  # per observation kept in the record (the model saw all of it)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return str(value)


def task_fields(task: Task, benchmark: str) -> dict[str, Any]:
    return {"id": task.id, "benchmark": benchmark, "question": task.question, "answer": task.answer,
            "verifier": task.verifier, "data_source": task.data_source, "category": task.category,
            "needs_tool": task.needs_tool, "num_images": len(task.images), "meta": _jsonable(task.meta)}


def trajectory_record(traj, benchmark: str, elapsed_s: float = 0.0) -> dict[str, Any]:
    """The JSON record of one finished trajectory (no tensors, no pixels)."""
    observations = [{"tool": o.get("tool"), "arguments": _jsonable(o.get("arguments")),
                     "error": o.get("error"), "text": str(o.get("text", ""))[:MAX_OBSERVATION_CHARS]}
                    for o in traj.observations]
    return {**task_fields(traj.task, benchmark),
            "final_answer": traj.final_answer, "response": traj.response_text,
            "num_tool_calls": traj.num_tool_calls, "tool_calls": [o["tool"] for o in observations],
            "tool_errors": traj.tool_errors, "error_kinds": [o["error"] for o in observations if o["error"]],
            "num_turns": traj.num_turns, "truncated": bool(traj.truncated),
            "response_tokens": len(traj.response_ids), "model_tokens": int(sum(traj.response_mask)),
            "observations": observations, "elapsed_s": round(elapsed_s, 3), "error": None}


def read_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """id -> the last record of that id (a good record is never replaced by a later error one)."""
    path = Path(path)
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                rid = str(rec["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning("%s:%d: unreadable prediction line ignored", path, n)
                continue
            if rec.get("error") and rid in out and not out[rid].get("error"):
                continue
            out[rid] = rec
    return out


@dataclass
class RunStats:
    total: int = 0
    reused: int = 0
    generated: int = 0
    failed: int = 0
    elapsed_s: float = 0.0


class EvalRunner:
    """Runs tasks through an :class:`metis.agent.loop.AgentLoop` and keeps the predictions file.

    Args:
        agent: the agent loop (engine bound to the model, toolbox, processor, limits), or a
            zero-argument callable building it, called only when something is left to generate
            (a finished rerun never loads the model).
        predictions_path: the JSON-lines file; created if missing.
        benchmark: name stored in each record.
        batch_size: tasks per ``agent.run`` call (the engine may split further).
        greedy: greedy decoding (the evaluation default).
        resume: False starts a fresh file (the old one is kept as ``<name>.jsonl.bak``).
    """

    def __init__(self, agent, predictions_path: str | Path, benchmark: str, batch_size: int = 16,
                 greedy: bool = True, resume: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._agent, self.benchmark = agent, benchmark
        self.path = Path(predictions_path)
        self.batch_size, self.greedy = int(batch_size), bool(greedy)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not resume and self.path.exists():
            os.replace(self.path, self.path.with_name(self.path.name + ".bak"))

    @property
    def agent(self):
        if callable(self._agent) and not hasattr(self._agent, "run"):
            self._agent = self._agent()
        return self._agent

    def finished_ids(self) -> set[str]:
        return {rid for rid, rec in read_predictions(self.path).items() if not rec.get("error")}

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _run_batch(self, batch: Sequence[Task]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            trajs = self.agent.run(list(batch), n=1, greedy=self.greedy)
            per = (time.perf_counter() - t0) / max(len(batch), 1)
            return [trajectory_record(t, self.benchmark, per) for t in trajs]
        except Exception as err:  # noqa: BLE001 - isolate the failing task(s), keep the others
            if len(batch) == 1:
                log.error("%s: task %s failed: %s: %s", self.benchmark, batch[0].id, type(err).__name__, err)
                return [{**task_fields(batch[0], self.benchmark), "final_answer": None, "num_tool_calls": 0,
                         "tool_calls": [], "tool_errors": 0, "num_turns": 0, "truncated": False,
                         "error": f"{type(err).__name__}: {str(err)[:500]}"}]
            log.warning("%s: a batch of %d failed (%s); retrying task by task", self.benchmark, len(batch), err)
            return [rec for task in batch for rec in self._run_batch([task])]

    def run(self, tasks: Sequence[Task]) -> RunStats:
        """Generate for every task without a good record; returns counts."""
        t0 = time.perf_counter()
        done = self.finished_ids()
        todo = [t for t in tasks if t.id not in done]
        stats = RunStats(total=len(tasks), reused=len(tasks) - len(todo))
        if stats.reused:
            log.info("%s: %d/%d samples already in %s, skipped", self.benchmark, stats.reused, len(tasks), self.path)
        if todo:
            _ = self.agent  # build the model now: a model that cannot load ends the run, it is no sample failure
        for start in range(0, len(todo), self.batch_size):
            records = self._run_batch(todo[start:start + self.batch_size])
            self._append(records)
            stats.generated += sum(not r.get("error") for r in records)
            stats.failed += sum(bool(r.get("error")) for r in records)
            log.info("%s: %d/%d samples done", self.benchmark, stats.reused + start + len(records), len(tasks))
        stats.elapsed_s = time.perf_counter() - t0
        return stats

    def records(self, tasks: Sequence[Task]) -> list[dict[str, Any]]:
        """The records of ``tasks``, in task order (tasks without a record are left out)."""
        known = read_predictions(self.path)
        return [known[t.id] for t in tasks if t.id in known]
