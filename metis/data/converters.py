"""Converters from public trajectory formats (and from rollouts) to :class:`TrajectoryRecord`.

Formats (docs/sft.md, "Converters"):

* ``messages`` layout — Metis-ColdStart style parquet, DeepEyesV2 SFT and any LLaMA-Factory
  "sharegpt" file: ``messages`` (role/content) or ``conversations`` (from/value), ``images`` as
  bytes, ``{"bytes", "path"}`` or paths. ``<think>`` becomes ``<reason>``; ``<code>```python …```</code>``
  becomes a Metis ``python`` tool call; ``search`` tool calls become ``text_search``; a
  ``function_call`` turn (``{"name", "arguments"}``) becomes an assistant tool call and an
  ``observation`` turn a tool observation; a user turn right after a tool-calling assistant turn
  (``Code execution result:`` …, ``<tool_response>`` …) becomes a ``tool`` observation;
  ``<image>`` placeholders become image parts. A ``messages`` list stored as a JSON string is decoded.
* ``thyme`` — ``image`` list (original first, then processed images), ``question``, ``response``
  with ``<think>`` … ``<code>`` … ``</code><sandbox_output>…</sandbox_output>`` … ``<answer>``;
  each sandbox output becomes a tool observation (no loss on it).

A row either converts faithfully or raises :class:`BadRecord` with a named kind (``bad_messages``,
``bad_content``, ``bad_tool_call``, ``bad_answer``, ``call_and_answer``, ``unbalanced_tags``,
``image_mismatch``, ``missing_image``, ...). Provenance (``source``) is the row's ``data_source``,
else the dataset's name. When a layout has no answer column, ``ground_truth`` is the trajectory's
own final answer and ``meta["ground_truth_from"] = "final_answer"`` says so.

Deliberate simplifications: every assistant turn is canonicalised to
``<reason>R</reason>`` + one ``<tool_call>{json}</tool_call>`` or ``<answer>A</answer>``, where R is
all of the turn's free text (text after a code block moves into R); a turn with two tool calls,
two answers, or a call and an answer is rejected, not guessed at; Thyme sandbox outputs are
re-headed ``Code execution result:`` with their images listed under ``Images:`` as the Metis python
tool does; source system prompts are kept (the SFT DataModule can replace them with the Metis one);
a LLaMA-Factory ``tools`` column is not read (the Metis prompt lists the Metis tools).
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
_FENCE_RE = re.compile(r"^\s*```[ \t]*(?:python|py)?[ \t]*\n(.*?)\n?[ \t]*```\s*$", re.S)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
_REASON_TAG_RE = re.compile(r"</?(?:reason|think)>")
_TOOL_RESPONSE_RE = re.compile(r"^\s*<tool_response>(.*?)</tool_response>\s*$", re.S)
_CODE_END_RE = re.compile(r"</code>\s*<sandbox_output>", re.S)


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """The Metis tool-call block for ``name(arguments)``."""
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False) + "</tool_call>"


def python_observation(stdout: str, num_images: int = 0) -> str:
    """An observation text exactly as the Metis ``python`` tool (metis.tools.python_tool) writes it."""
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


def _code_text(body: str) -> str:
    """The code of a ``<code>`` block: the inside of a fenced block, else the text as is."""
    m = _FENCE_RE.match(body)
    return (m.group(1) if m else body).strip("\n")


def _code_block(text: str) -> tuple[int, int]:
    """``(start of <code>, start of </code>)`` of the turn's code block, or ``(-1, -1)``: it ends at
    the last ``</code>`` and starts at the ``<code>`` that balances it, so tags the code prints
    (``print("<code>x</code>")``) nest inside and a ``<code>`` mentioned in the reasoning before
    it stays in the reasoning (where validation rejects it)."""
    end = text.rfind("</code>")
    depth = 0
    for m in reversed(list(re.finditer(r"</?code>", text[:max(end, 0)]))):
        if m.group() == "</code>":
            depth += 1
        elif depth == 0:
            return m.start(), end
        else:
            depth -= 1
    return -1, -1


def _outside(text: str, spans: list[tuple[int, int]]) -> str:
    rest, pos = [], 0
    for start, end in sorted(spans):
        rest.append(text[pos:start])
        pos = max(pos, end)
    rest.append(text[pos:])
    return "".join(rest)


def canonical_assistant(text: str) -> tuple[str, dict[str, Any] | None]:
    """``(canonical text, tool call or None)`` of one assistant turn (idempotent).

    The ``<code>`` block is found by :func:`_code_block`, so code that prints tags stays whole;
    answers are looked for outside tool calls only. A turn with two tool calls, two answers, or a
    tool call and an answer raises :class:`BadRecord` (``bad_tool_call`` / ``bad_answer`` /
    ``call_and_answer``). Tags left unmatched stay in the reasoning text, where
    :meth:`TrajectoryRecord.validate` rejects them.
    """
    calls = [(m.span(), _parse_call(m.group(1))) for m in _CALL_RE.finditer(text)]
    start, end = _code_block(text)
    if start >= 0 and not any(s <= start < e for (s, e), _ in calls):
        if "</code>" in text[:start]:
            raise BadRecord("bad_tool_call", "2 code blocks in one assistant turn")
        code = _code_text(text[start + len("<code>"):end])
        calls.append(((start, end + len("</code>")), {"name": "python", "arguments": {"code": code}}))
    if len(calls) > 1:
        raise BadRecord("bad_tool_call", f"{len(calls)} tool calls in one assistant turn")
    outside = _outside(text, [s for s, _ in calls])
    answers = list(_ANSWER_RE.finditer(outside))
    if len(answers) > 1:
        raise BadRecord("bad_answer", f"{len(answers)} <answer> blocks in one assistant turn")
    if answers and calls:
        raise BadRecord("call_and_answer", "an assistant turn holds both a tool call and an <answer>")
    reason = _REASON_TAG_RE.sub("", _outside(outside, [m.span() for m in answers])).strip()
    call = calls[0][1] if calls else None
    if call is not None:
        return f"<reason>{reason}</reason>" + tool_call_text(call["name"], call["arguments"]), call
    if answers:
        return f"<reason>{reason}</reason><answer>{answers[0].group(1).strip()}</answer>", None
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
    if not isinstance(content, (list, tuple)) and not hasattr(content, "tolist"):
        raise BadRecord("bad_content", f"message content is a {type(content).__name__}, not text or a list of parts")
    parts = []
    for p in _as_list(content):
        if isinstance(p, str):
            parts.extend(split_placeholders(p))
            continue
        if not isinstance(p, dict):
            raise BadRecord("bad_content", f"content part is a {type(p).__name__}, not an object")
        kind = p.get("type")
        if kind in ("image", "image_url") or ("image" in p and kind != "text" and p.get("text") is None):
            parts.append({"type": "image"})
        elif isinstance(p.get("text"), str):
            parts.extend(split_placeholders(p["text"]))
        elif p.get("text") is not None:
            raise BadRecord("bad_content", f"content part text is a {type(p['text']).__name__}")
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
    """The row's answer column(s), or ``[]`` when the layout has none."""
    for key in ("ground_truth", "answer", "solution", "gt"):
        if row.get(key) not in (None, ""):
            return [str(v) for v in _as_list(row[key])]
    for outer, inner in (("reward_model", "ground_truth"), ("extra_info", "answer")):
        if isinstance(row.get(outer), dict) and row[outer].get(inner) not in (None, ""):
            return [str(v) for v in _as_list(row[outer][inner])]
    return []


def _record(row: dict[str, Any], rid: str, messages: list[dict[str, Any]], images: list[Any], source: str,
            layout: str) -> TrajectoryRecord:
    """The record, with the trajectory's own final answer as ground truth (marked in ``meta``)
    when the row has no answer column."""
    final = _final_answer(messages)
    truth, meta = _ground_truth(row), {"layout": layout}
    if not truth and final is not None:
        truth, meta["ground_truth_from"] = [final], "final_answer"
    return TrajectoryRecord(id=rid, messages=messages, images=images, final_answer=final, ground_truth=truth,
                            source=str(row.get("data_source") or source), source_id=rid, meta=meta)


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


# ---- the messages layout (Metis-ColdStart, DeepEyesV2, LLaMA-Factory sharegpt) -------------
def _raw_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    raw = row.get("messages")
    if raw is None:
        raw = row.get("conversations")
    if isinstance(raw, str):  # a writer that stored the list as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise BadRecord("bad_messages", f"messages is a string that is not JSON ({err})") from None
    raw = _as_list(raw) if raw is not None and not isinstance(raw, (dict, str)) else raw
    if not isinstance(raw, list) or not raw:
        raise BadRecord("bad_messages", "row has no messages/conversations list")
    for m in raw:
        if not isinstance(m, dict):
            raise BadRecord("bad_messages", f"a message is a {type(m).__name__}, not an object")
    return raw


def _function_call(value: Any) -> dict[str, Any]:
    """A LLaMA-Factory ``function_call`` turn (``{"name", "arguments"}``, JSON text or object)."""
    payload = value if isinstance(value, str) else json.dumps(value, default=str)
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            raise BadRecord("bad_tool_call", f"{len(parsed)} parallel tool calls in one function_call turn")
    return _parse_call(payload)


def from_messages_row(row: dict[str, Any], image_root: str | Path | None = None, source: str | None = None,
                      full_decode: bool = True) -> TrajectoryRecord:
    """A ``messages`` (role/content) or ``conversations`` (from/value) row as a record.

    LLaMA-Factory ``function_call`` turns become assistant tool calls and ``observation`` turns
    tool observations.
    """
    raw = _raw_messages(row)
    messages: list[dict[str, Any]] = []
    if row.get("system") and not any((m.get("role") or m.get("from")) == "system" for m in raw):
        messages.append({"role": "system", "content": split_placeholders(str(row["system"])), "tool_call": None})
    for m in raw:
        role_raw = m.get("role") if m.get("role") is not None else m.get("from")
        role = ROLE_MAP.get(str(role_raw))
        if role is None:
            raise BadRecord("bad_messages", f"unknown role {role_raw!r}")
        value = m.get("content") if "content" in m else m.get("value")
        if role_raw == "function_call":
            call, reason = _function_call(value), ""
            prev = messages[-1] if messages else None
            if prev is not None and prev["role"] == "assistant" and not prev["tool_call"] \
                    and "<answer>" not in parts_text(prev["content"]):  # its thought, then the call: one turn
                reason = _REASON_TAG_RE.sub("", parts_text(messages.pop()["content"])).strip()
            text = f"<reason>{reason}</reason>" + tool_call_text(call["name"], call["arguments"])
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text}], "tool_call": call})
            continue
        parts = _to_parts(value)
        if role == "assistant":
            if any(p["type"] == "image" for p in parts):
                raise BadRecord("bad_messages", "image inside an assistant turn")
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
    return _record(row, _row_id(row, raw), messages, images, source or "messages", "messages")


def from_deepeyes_v2(row: dict[str, Any], image_root: str | Path | None = None, source: str | None = None,
                     full_decode: bool = True) -> TrajectoryRecord:
    """One DeepEyesV2 SFT example (LLaMA-Factory sharegpt JSON, image paths under ``image_root``)."""
    return from_messages_row(row, image_root, source=source or "DeepEyesV2", full_decode=full_decode)


# ---- Thyme --------------------------------------------------------------------------------------
def from_thyme(row: dict[str, Any], image_root: str | Path | None = None, source: str | None = None,
               full_decode: bool = True) -> TrajectoryRecord:
    """One Thyme SFT example (``image``, ``question``, ``response``) as a record.

    The response is read left to right: a code block ends at the first ``</code>`` followed by a
    ``<sandbox_output>``, which ends at its ``</sandbox_output>``; scanning resumes after it, so
    tags printed by the code or inside a sandbox output (every traceback says ``File "<code>"``)
    never start or end a block. A ``<code>`` with no ``</code><sandbox_output>`` after it, or a
    sandbox output never closed, is ``unbalanced_tags``.
    """
    raw_images = _as_list(row.get("image") if row.get("image") is not None else row.get("images"))
    question, response = row.get("question"), row.get("response")
    if not isinstance(question, (str, type(None))) or not isinstance(response, (str, type(None))):
        raise BadRecord("bad_content", "Thyme question/response must be text")
    question, response = question or "", response or ""
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
    while (start := response.find("<code>", pos)) >= 0:
        end = _CODE_END_RE.search(response, start)
        if end is None:
            raise BadRecord("unbalanced_tags", "a <code> block not followed by </code><sandbox_output>")
        close = response.find("</sandbox_output>", end.end())
        if close < 0:
            raise BadRecord("unbalanced_tags", "a <sandbox_output> never closed")
        text, call = canonical_assistant(response[pos:end.start() + len("</code>")])
        if call is None or call["name"] != "python":
            raise BadRecord("bad_tool_call", "a Thyme code block did not parse as one python call")
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}], "tool_call": call})
        body = response[end.end():close]
        n_img = body.count(IMAGE_PLACEHOLDER)
        stdout = body.replace(IMAGE_PLACEHOLDER, "").strip()
        messages.append({"role": "tool", "content": split_placeholders(python_observation(stdout, n_img)),
                         "tool_call": None})
        pos = close + len("</sandbox_output>")
    text, call = canonical_assistant(response[pos:])
    if text:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": text}], "tool_call": call})
    _place_images(messages, len(raw_images))
    images = [open_image(im, image_root, full_decode) for im in raw_images]
    return _record(row, _row_id(row, [question, response]), messages, images, source or "Thyme", "thyme")


# ---- dispatch -----------------------------------------------------------------------------------
def _from_metis_row(row: dict[str, Any], image_root: str | Path | None = None, source: str | None = None,
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
        raise ValueError(f"columns {sorted(cols)} look like an RL prompt set (verl 'prompt'), not SFT "
                         "trajectories (assistant turns with tool calls and a final answer)")
    raise ValueError(f"cannot tell the trajectory layout from columns {sorted(cols)}; "
                     f"pass layout= one of {sorted(LAYOUTS)}")


def row_converter(columns: Sequence[str], layout: str = "auto", image_root: str | Path | None = None,
                  full_decode: bool = True, source: str | None = None) -> Callable[[dict[str, Any]], TrajectoryRecord]:
    """A picklable ``row -> TrajectoryRecord`` for a table with ``columns``; ``source`` (the dataset's
    name) is the provenance of rows that name no ``data_source``."""
    name = detect_layout(columns) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}")
    return functools.partial(LAYOUTS[name], image_root=image_root, source=source, full_decode=full_decode)


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
