"""Converters from public trajectory formats (and from rollouts) to :class:`TrajectoryRecord`.

Formats (docs/paper.md, "Published data layouts"):

* ``messages`` layout — Metis-ColdStart style parquet and DeepEyesV2 SFT (LLaMA-Factory sharegpt
  JSON): ``messages`` (role/content) or ``conversations`` (from/value), ``images`` as bytes,
  ``{"bytes", "path"}`` or paths. ``<think>`` becomes ``<reason>``; ``<code>```python …```</code>``
  becomes a Metis ``python`` tool call; ``search`` tool calls become ``text_search``; a user turn
  right after a tool-calling assistant turn (``Code execution result:`` …, ``<tool_response>`` …)
  becomes a ``tool`` observation; ``<image>`` placeholders become image parts.
* ``thyme`` — ``image`` list (original first, then processed images), ``question``, ``response``
  with ``<think>`` … ``<code>`` … ``</code><sandbox_output>…</sandbox_output>`` … ``<answer>``;
  each sandbox output becomes a tool observation (no loss on it).

Deliberate simplifications: every assistant turn is canonicalised to
``<reason>R</reason>`` + one ``<tool_call>{json}</tool_call>`` or ``<answer>A</answer>``, where R is
all of the turn's free text (text after a code block moves into R); a turn with two tool calls is
rejected (``BadRecord``); Thyme sandbox outputs are re-headed ``Code execution result:`` with their
images listed under ``Images:`` as the Metis python tool does; source system prompts are kept (the
SFT DataModule can replace them with the Metis one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from metis.core.format import ParseError, parse_tool_call, sanitize_observation
from metis.core.task import Task
from metis.data.schema import (
    IMAGE_PLACEHOLDER, BadRecord, TrajectoryRecord, open_image, parts_text, split_placeholders,
)

PYTHON_HEADER = "Code execution result:\n"
TOOL_NAME_MAP = {"search": "text_search", "web_search": "text_search", "text_search": "text_search",
                 "image_search": "image_search", "python": "python", "code_interpreter": "python"}
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
            "observation": "tool", "tool": "tool", "function": "tool", "ipython": "tool",
            "function_call": "assistant"}

_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_CODE_RE = re.compile(r"<code>\s*(?:```[ \t]*(?:python|py)?[ \t]*\n)?(.*?)(?:\n?[ \t]*```)?\s*</code>", re.S)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_REASON_TAG_RE = re.compile(r"</?(?:reason|think)>")
_TOOL_RESPONSE_RE = re.compile(r"^\s*<tool_response>(.*?)</tool_response>\s*$", re.S)
_SANDBOX_RE = re.compile(r"\s*<sandbox_output>(.*?)</sandbox_output>", re.S)


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """The Metis tool-call block for ``name(arguments)``."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def python_observation(stdout: str, num_images: int = 0) -> str:
    """An observation text exactly as the Metis ``python`` tool writes it (docs/paper.md, "Rollout format")."""
    text = PYTHON_HEADER + stdout
    if num_images:
        text += "\nImages:\n" + "\n".join(IMAGE_PLACEHOLDER for _ in range(num_images))
    return text


def _parse_call(payload: str) -> dict[str, Any]:
    try:
        call = json.loads(payload.strip())
    except json.JSONDecodeError as err:
        raise BadRecord("bad_tool_call", f"tool call is not JSON ({err})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise BadRecord("bad_tool_call", "tool call needs a 'name'")
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            raise BadRecord("bad_tool_call", "'arguments' is a string that is not JSON") from None
    if not isinstance(args, dict):
        raise BadRecord("bad_tool_call", "'arguments' must be an object")
    return {"name": TOOL_NAME_MAP.get(call["name"], call["name"]), "arguments": args}


def canonical_assistant(text: str) -> tuple[str, dict[str, Any] | None]:
    """``(canonical text, tool call or None)`` of one assistant turn (idempotent)."""
    calls = [(m.span(), _parse_call(m.group(1))) for m in _CALL_RE.finditer(text)]
    calls += [(m.span(), {"name": "python", "arguments": {"code": m.group(1).strip("\n")}})
              for m in _CODE_RE.finditer(text)]
    if len(calls) > 1:
        raise BadRecord("bad_tool_call", f"{len(calls)} tool calls in one assistant turn")
    answers = list(_ANSWER_RE.finditer(text))
    spans = [s for s, _ in calls] + [m.span() for m in answers]
    rest, pos = [], 0
    for start, end in sorted(spans):
        rest.append(text[pos:start])
        pos = max(pos, end)
    rest.append(text[pos:])
    reason = _REASON_TAG_RE.sub("", "".join(rest)).strip()
    call = calls[0][1] if calls else None
    if call is not None:
        return f"<reason>{reason}</reason>" + tool_call_text(call["name"], call["arguments"]), call
    if answers:
        return f"<reason>{reason}</reason><answer>{answers[-1].group(1).strip()}</answer>", None
    return (f"<reason>{reason}</reason>" if reason else ""), None


def _clean_observation(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    text = parts_text(parts)
    m = _TOOL_RESPONSE_RE.match(text)
    return split_placeholders(m.group(1).strip()) if m else parts


def _to_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return split_placeholders(content)
    parts = []
    for p in content:
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("image", "image_url") or (isinstance(p, dict) and "image" in p and kind != "text"):
            parts.append({"type": "image"})
        elif isinstance(p, dict) and p.get("text") is not None:
            parts.extend(split_placeholders(str(p["text"])))
    return parts


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        return list(value.tolist())
    return [value]


def _ground_truth(row: dict[str, Any]) -> list[str]:
    for key in ("ground_truth", "answer", "solution", "gt"):
        if row.get(key) not in (None, ""):
            return [str(v) for v in _as_list(row[key])]
    for outer, inner in (("reward_model", "ground_truth"), ("extra_info", "answer")):
        if isinstance(row.get(outer), dict) and row[outer].get(inner) not in (None, ""):
            return [str(v) for v in _as_list(row[outer][inner])]
    return []


def _row_id(row: dict[str, Any], messages: Any) -> str:
    for key in ("id", "index", "idx", "source_id"):
        if row.get(key) not in (None, ""):
            return str(row[key])
    if isinstance(row.get("extra_info"), dict) and row["extra_info"].get("index") is not None:
        return str(row["extra_info"]["index"])
    return hashlib.sha1(json.dumps(messages, default=str, sort_keys=True).encode()).hexdigest()[:16]


def _final_answer(messages: list[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m["role"] == "assistant":
            found = _ANSWER_RE.findall(parts_text(m["content"]))
            return found[-1].strip() if found else None
    return None


def _place_images(messages: list[dict[str, Any]], n_images: int) -> None:
    """No placeholders at all: the images go in front of the first user message (LLaMA-Factory)."""
    n_parts = sum(p["type"] == "image" for m in messages for p in m["content"])
    if n_parts == 0 and n_images:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise BadRecord("image_mismatch", "images but no user message")
        first_user["content"] = [{"type": "image"} for _ in range(n_images)] + first_user["content"]
    elif n_parts != n_images:
        raise BadRecord("image_mismatch", f"{n_parts} <image> placeholders for {n_images} images")


# ---- the messages layout (Metis-ColdStart, DeepEyesV2) ----------------------------------------
def from_messages_row(row: dict[str, Any], image_root: str | Path | None = None, source: str | None = None,
                      full_decode: bool = True) -> TrajectoryRecord:
    """A ``messages`` (role/content) or ``conversations`` (from/value) row as a record."""
    raw = row.get("messages")
    if raw is None:
        raw = row.get("conversations")
    if raw is None or len(raw) == 0:
        raise BadRecord("bad_row", "row has no messages/conversations")
    messages: list[dict[str, Any]] = []
    if row.get("system") and not any((m.get("role") or m.get("from")) == "system" for m in raw):
        messages.append({"role": "system", "content": split_placeholders(str(row["system"])), "tool_call": None})
    for m in raw:
        role_raw = m.get("role") if m.get("role") is not None else m.get("from")
        role = ROLE_MAP.get(str(role_raw))
        if role is None:
            raise BadRecord("bad_row", f"unknown role {role_raw!r}")
        parts = _to_parts(m.get("content") if "content" in m else m.get("value"))
        if role == "assistant":
            if any(p["type"] == "image" for p in parts):
                raise BadRecord("bad_row", "image inside an assistant turn")
            text, call = canonical_assistant(parts_text(parts))
            if text:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": text}], "tool_call": call})
            continue
        prev = messages[-1] if messages else None
        if role == "user" and prev is not None and prev["role"] == "assistant" and prev["tool_call"]:
            role = "tool"
        if role == "tool":
            parts = _clean_observation(parts)
        messages.append({"role": role, "content": parts, "tool_call": None})
    raw_images = _as_list(row.get("images") if row.get("images") is not None else row.get("image"))
    _place_images(messages, len(raw_images))
    images = [open_image(im, image_root, full_decode) for im in raw_images]
    src = source or str(row.get("data_source") or row.get("source") or "messages")
    return TrajectoryRecord(id=_row_id(row, raw), messages=messages, images=images,
                            final_answer=_final_answer(messages), ground_truth=_ground_truth(row),
                            source=src, source_id=_row_id(row, raw), meta={"layout": "messages"})


def from_deepeyes_v2(row: dict[str, Any], image_root: str | Path | None = None,
                     full_decode: bool = True) -> TrajectoryRecord:
    """One DeepEyesV2 SFT example (LLaMA-Factory sharegpt JSON, image paths under ``image_root``)."""
    return from_messages_row(row, image_root, source="DeepEyesV2", full_decode=full_decode)


# ---- Thyme --------------------------------------------------------------------------------------
def from_thyme(row: dict[str, Any], image_root: str | Path | None = None, full_decode: bool = True) -> TrajectoryRecord:
    """One Thyme SFT example (``image``, ``question``, ``response``) as a record."""
    raw_images = _as_list(row.get("image") if row.get("image") is not None else row.get("images"))
    question = str(row.get("question") or "")
    response = str(row.get("response") or "")
    if not response.strip():
        raise BadRecord("no_assistant_turn", "empty response")
    user = split_placeholders(question)
    if not any(p["type"] == "image" for p in user) and raw_images:
        user = [{"type": "image"}] + user
    messages: list[dict[str, Any]] = []
    if row.get("system"):
        messages.append({"role": "system", "content": split_placeholders(str(row["system"])), "tool_call": None})
    messages.append({"role": "user", "content": user, "tool_call": None})
    pos = 0
    for m in _CODE_RE.finditer(response):
        if m.start() < pos:
            continue
        text, call = canonical_assistant(response[pos:m.end()])
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}], "tool_call": call})
        out = _SANDBOX_RE.match(response, m.end())
        if out is None:
            raise BadRecord("bad_row", "a <code> block without a <sandbox_output>")
        body = out.group(1)
        n_img = body.count(IMAGE_PLACEHOLDER)
        stdout = body.replace(IMAGE_PLACEHOLDER, "").strip()
        messages.append({"role": "tool", "content": split_placeholders(python_observation(stdout, n_img)),
                         "tool_call": None})
        pos = out.end()
    text, call = canonical_assistant(response[pos:])
    if text:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}], "tool_call": call})
    _place_images(messages, len(raw_images))
    images = [open_image(im, image_root, full_decode) for im in raw_images]
    rid = _row_id(row, [question, response])
    return TrajectoryRecord(id=rid, messages=messages, images=images, final_answer=_final_answer(messages),
                            ground_truth=_ground_truth(row), source=str(row.get("data_source") or "Thyme"),
                            source_id=rid, meta={"layout": "thyme"})


# ---- dispatch -----------------------------------------------------------------------------------
def _from_metis_row(row: dict[str, Any], image_root: str | Path | None = None,
                    full_decode: bool = True) -> TrajectoryRecord:
    return TrajectoryRecord.from_row(row, image_root, full_decode)


LAYOUTS: dict[str, Callable[..., TrajectoryRecord]] = {
    "metis": _from_metis_row, "messages": from_messages_row, "deepeyes_v2": from_deepeyes_v2, "thyme": from_thyme,
}


def detect_layout(columns: Sequence[str]) -> str:
    cols = set(columns)
    if {"messages", "source_id", "meta"} <= cols:
        return "metis"
    if {"question", "response"} <= cols:
        return "thyme"
    if "messages" in cols or "conversations" in cols:
        return "messages"
    if "prompt" in cols:
        raise ValueError(f"columns {sorted(cols)} look like an RL prompt set (verl 'prompt'), not trajectories")
    raise ValueError(f"cannot tell the trajectory layout from columns {sorted(cols)}; "
                     f"pass layout= one of {sorted(LAYOUTS)}")


def row_converter(columns: Sequence[str], layout: str = "auto", image_root: str | Path | None = None,
                  full_decode: bool = True) -> Callable[[dict[str, Any]], TrajectoryRecord]:
    """A picklable ``row -> TrajectoryRecord`` for a table with ``columns``."""
    name = detect_layout(columns) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}")
    return functools.partial(LAYOUTS[name], image_root=image_root, full_decode=full_decode)


def to_messages_row(record: TrajectoryRecord) -> dict[str, Any]:
    """A record in the plain ``messages`` layout (string contents with ``<image>``, image bytes)."""
    import io

    def png(img) -> dict[str, Any]:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    return {"id": record.id, "data_source": record.source,
            "messages": [{"role": m["role"], "content": parts_text(m["content"])} for m in record.messages],
            "images": [png(im) for im in record.images], "ground_truth": list(record.ground_truth)}


# ---- rollouts -----------------------------------------------------------------------------------
def record_from_trajectory(traj: Any, system_prompt: str | None = None) -> TrajectoryRecord:
    """A rollout (``metis.core.trajectory.Trajectory``) as a record.

    Observations are matched to the turns that ended in ``</tool_call>``; each takes as many of
    the rollout's observation images as its text has ``<image>`` placeholders (the Python tool
    writes one per image). Images that cannot be placed are dropped and counted in ``meta``.
    """
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


def task_from_record(record: TrajectoryRecord) -> Task:
    """The prompt of a record (first user turn and its images) as a :class:`metis.core.task.Task`."""
    user = next((m for m in record.messages if m["role"] == "user"), None)
    if user is None:
        raise BadRecord("bad_row", "record has no user message")
    n_img = sum(p["type"] == "image" for p in user["content"])
    answer: str | list[str] = record.ground_truth[0] if len(record.ground_truth) == 1 else list(record.ground_truth)
    return Task(id=record.id, question=parts_text(user["content"]), images=list(record.images[:n_img]),
                answer=answer, data_source=record.source, meta=dict(record.meta))
