"""Batched, resumable inference over benchmark tasks with the training agent loop.

Each sample is appended to a JSON-lines file (one record per task id) the moment its trajectory
finishes (:class:`EvalLoop` reports finished trajectories turn by turn), so an interrupt loses
only the samples still in flight. Every record carries the run's fingerprint
(:mod:`metis.eval.fingerprint`: checkpoint, prompt, loop settings) and the sha of its input
(question and pixels). A rerun reuses a record only when both still match; other samples are
generated again. A batch that raises is retried task by task; a task that still raises gets an
``error`` record, which a rerun retries. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metis.agent.loop import AgentLoop
from metis.core.task import Task
from metis.eval.fingerprint import task_input_sha
from metis.io.jsonl import JsonlLog
from metis.rl.rewards import extract_answer

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
    out: dict[str, dict[str, Any]] = {}
    for n, rec in JsonlLog(path).rows():
        if rec.get("id") is None:
            log.warning("%s:%d: prediction without id ignored", path, n)
            continue
        rid = str(rec["id"])
        if rec.get("error") and rid in out and not out[rid].get("error"):
            continue
        out[rid] = rec
    return out


class EvalLoop(AgentLoop):
    """The training agent loop, reporting each trajectory as soon as it is done (``on_done``)."""

    on_done: Callable | None = None

    def _release(self, trajs) -> None:
        super()._release(trajs)
        for traj in trajs:
            if traj.done and not getattr(traj, "_reported", False) and self.on_done is not None:
                traj._reported = True
                traj.final_answer = extract_answer(traj.response_text)
                self.on_done(traj)


@dataclass
class RunStats:
    total: int = 0
    reused: int = 0
    generated: int = 0
    failed: int = 0
    stale: int = 0  # good records not reused: other fingerprint or changed input
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
        fingerprint: the run's fingerprint; records made under another one are not reused.
    """

    def __init__(self, agent, predictions_path: str | Path, benchmark: str, batch_size: int = 16,
                 greedy: bool = True, resume: bool = True, fingerprint: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._agent, self.benchmark, self.fingerprint = agent, benchmark, fingerprint
        self.path = Path(predictions_path)
        self.batch_size, self.greedy = int(batch_size), bool(greedy)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._written: set[str] = set()
        self._input_sha: dict[str, str] = {}
        self._log = JsonlLog(self.path)
        if not resume:
            self._log.set_aside()

    @property
    def agent(self):
        if callable(self._agent) and not hasattr(self._agent, "run"):
            self._agent = self._agent()
        return self._agent

    def _sha(self, task: Task) -> str:
        if task.id not in self._input_sha:
            self._input_sha[task.id] = task_input_sha(task)
        return self._input_sha[task.id]

    def reusable(self, rec: dict[str, Any] | None, task: Task) -> bool:
        return bool(rec) and not rec.get("error") and rec.get("fingerprint") == self.fingerprint and \
            rec.get("input_sha") == self._sha(task)

    def finished_ids(self, tasks: Sequence[Task]) -> set[str]:
        known = read_predictions(self.path)
        return {t.id for t in tasks if self.reusable(known.get(t.id), t)}

    def _append(self, records: Sequence[dict[str, Any]]) -> None:
        self._log.append(records)
        self._written.update(str(r["id"]) for r in records)

    def _stamp(self, rec: dict[str, Any], task: Task) -> dict[str, Any]:
        return {**rec, "fingerprint": self.fingerprint, "input_sha": self._sha(task)}

    def _error_record(self, task: Task, error: str) -> dict[str, Any]:
        return self._stamp({**task_fields(task, self.benchmark), "final_answer": None, "num_tool_calls": 0,
                            "tool_calls": [], "tool_errors": 0, "num_turns": 0, "truncated": False,
                            "error": error}, task)

    def _run_batch(self, batch: Sequence[Task]) -> list[dict[str, Any]]:
        """Generates ``batch``; every record is appended as soon as it exists. Returns the new records."""
        batch = [t for t in batch if t.id not in self._written]
        if not batch:
            return []
        t0 = time.perf_counter()
        by_id = {t.id: t for t in batch}
        new: list[dict[str, Any]] = []

        def done(traj) -> None:
            if traj.task.id in self._written or traj.task.id not in by_id:
                return
            rec = self._stamp(trajectory_record(traj, self.benchmark, time.perf_counter() - t0), traj.task)
            self._append([rec])
            new.append(rec)

        agent = self.agent
        if isinstance(agent, EvalLoop):
            agent.on_done = done
        try:
            trajs = agent.run(list(batch), n=1, greedy=self.greedy)
        except Exception as err:  # noqa: BLE001 - isolate the failing task(s), keep the others
            if len(batch) == 1:
                log.error("%s: task %s failed: %s: %s", self.benchmark, batch[0].id, type(err).__name__, err)
                rec = self._error_record(batch[0], f"{type(err).__name__}: {str(err)[:500]}")
                self._append([rec])
                return new + [rec]
            log.warning("%s: a batch of %d failed (%s); retrying task by task", self.benchmark, len(batch), err)
            return new + [rec for task in batch for rec in self._run_batch([task])]
        finally:
            if isinstance(agent, EvalLoop):
                agent.on_done = None
        for traj in trajs:
            done(traj)
        skipped = {s.get("task_id"): s.get("error") for s in getattr(agent, "skipped", [])}
        for task in batch:  # the loop could not start it (prompt too long, broken image)
            if task.id not in self._written:
                rec = self._error_record(task, str(skipped.get(task.id) or "no trajectory returned"))
                self._append([rec])
                new.append(rec)
        return new

    def run(self, tasks: Sequence[Task]) -> RunStats:
        """Generate for every task without a reusable record; returns counts."""
        t0 = time.perf_counter()
        known = read_predictions(self.path)
        todo = [t for t in tasks if not self.reusable(known.get(t.id), t)]
        stats = RunStats(total=len(tasks), reused=len(tasks) - len(todo))
        stats.stale = sum(1 for t in todo if known.get(t.id) and not known[t.id].get("error"))
        if stats.reused:
            log.info("%s: %d/%d samples already in %s, reused", self.benchmark, stats.reused, len(tasks), self.path)
        if stats.stale:
            log.warning("%s: %d stored predictions were made for another input (data changed); generating them again",
                        self.benchmark, stats.stale)
        if todo:
            _ = self.agent  # build the model now: a model that cannot load ends the run, it is no sample failure
        for start in range(0, len(todo), self.batch_size):
            records = self._run_batch(todo[start:start + self.batch_size])
            stats.generated += sum(not r.get("error") for r in records)
            stats.failed += sum(bool(r.get("error")) for r in records)
            log.info("%s: %d/%d samples done", self.benchmark, stats.reused + start + len(records), len(tasks))
        stats.elapsed_s = time.perf_counter() - t0
        return stats

    def records(self, tasks: Sequence[Task]) -> list[dict[str, Any]]:
        """The records of ``tasks``, in task order (tasks without a record are left out)."""
        known = read_predictions(self.path)
        return [known[t.id] for t in tasks if t.id in known]
