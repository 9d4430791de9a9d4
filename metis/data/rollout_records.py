"""Records from rollouts, and tasks from records: the agent side of :mod:`metis.data.schema`.

* :func:`record_from_trajectory`: a rollout (``metis.core.trajectory.Trajectory``) as a
  :class:`TrajectoryRecord` (saved rollouts, SFT on own rollouts, evaluation logs);
* :func:`task_from_record`: the prompt of a record (first user turn, its images, the ground truth)
  as a :class:`metis.core.task.Task` (the curation policy stages ask it again).
"""

from __future__ import annotations

from typing import Any

from metis.data.schema import IMAGE_PLACEHOLDER, BadRecord, TrajectoryRecord, parts_text, split_placeholders


def record_from_trajectory(traj: Any, system_prompt: str | None = None) -> TrajectoryRecord:
    """A rollout (``metis.core.trajectory.Trajectory``) as a record.

    Observations are matched to the turns that ended in ``</tool_call>``; each takes as many of
    the rollout's observation images as its text has ``<image>`` placeholders (the Python tool
    writes one per image). Images that cannot be placed are dropped and counted in ``meta``.
    """
    from metis.core.format import ParseError, parse_tool_call, sanitize_observation

    task = traj.task
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}], "tool_call": None})
    messages.append({"role": "user", "content": [dict(p) for p in task.content()], "tool_call": None})
    images = list(task.images)
    extra = list(traj.images[len(task.images):])
    observations = iter(traj.observations)
    parse_errors = 0
    for turn in traj.turn_texts:
        text = turn[: -len("<|im_end|>")] if turn.endswith("<|im_end|>") else turn
        call = None
        if text.rstrip().endswith("</tool_call>"):
            parsed = parse_tool_call(text)
            if isinstance(parsed, ParseError):
                parse_errors += 1
            else:
                call = {"name": parsed.name, "arguments": parsed.arguments}
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}], "tool_call": call})
        if text.rstrip().endswith("</tool_call>"):
            obs = next(observations, None)
            if obs is None:
                continue
            n = min(obs["text"].count(IMAGE_PLACEHOLDER), len(extra))
            images.extend(extra[:n])
            extra = extra[n:]
            messages.append({"role": "tool", "content": split_placeholders(sanitize_observation(obs["text"], n)),
                             "tool_call": None})
    answer = task.answer if isinstance(task.answer, list) else [task.answer]
    meta = {"group_id": traj.group_id, "num_tool_calls": traj.num_tool_calls, "tool_errors": traj.tool_errors,
            "num_turns": traj.num_turns, "truncated": traj.truncated, "needs_tool": task.needs_tool,
            "category": task.category, "verifier": task.verifier, "task_meta": task.meta,
            "parse_errors": parse_errors, "dropped_images": len(extra),
            "tool_errors_by_turn": [o.get("error") for o in traj.observations]}
    return TrajectoryRecord(id=traj.traj_id, messages=messages, images=images, final_answer=traj.final_answer,
                            ground_truth=[str(a) for a in answer], source=task.data_source, source_id=task.id,
                            meta=meta)


def task_from_record(record: TrajectoryRecord):
    """The prompt of a record (first user turn and its images) as a :class:`metis.core.task.Task`."""
    from metis.core.task import Task

    user = next((m for m in record.messages if m["role"] == "user"), None)
    if user is None:
        raise BadRecord("bad_row", "record has no user message")
    n_img = sum(p["type"] == "image" for p in user["content"])
    answer: str | list[str] = record.ground_truth[0] if len(record.ground_truth) == 1 else list(record.ground_truth)
    return Task(id=record.id, question=parts_text(user["content"]), images=list(record.images[:n_img]),
                answer=answer, data_source=record.source, meta=dict(record.meta))
