"""One trajectory schema for the whole project: SFT data, saved rollouts, curation, eval logs.

A :class:`TrajectoryRecord` is a chat (system / user / assistant / tool messages whose content is a
list of ``{"type": "text", "text": ...}`` and ``{"type": "image"}`` parts), the images the image
parts refer to (in order of appearance across all messages), the tool call of each assistant turn,
the final answer, the ground truth, the provenance and a free ``meta`` dict.

Storage is a Hugging Face ``datasets`` dataset (parquet, images as bytes): :func:`save_records` /
:func:`load_records` (a local parquet file or directory, a JSON/JSONL file, or a hub id, read
through :func:`metis.io.tables.open_table`). Foreign layouts (Metis-ColdStart, DeepEyesV2,
LLaMA-Factory sharegpt, Thyme) are recognised by their columns and converted row by row through
:mod:`metis.data.converters`.

:meth:`TrajectoryRecord.validate` checks what training relies on: known roles, some assistant
text, one image per image part, balanced tags in every assistant turn (``unbalanced_tags``), no
``<tool_call>`` / ``<code>`` inside reasoning (``tool_call_in_reasoning``), every ``<tool_call>``
block parsed into the turn's ``tool_call`` (``bad_tool_call``), and a final ``<answer>`` in the last
assistant turn (``no_final_answer``; ``require_answer=False`` keeps answerless rows).

Deliberate simplifications: tool-call arguments and ``meta`` are stored as JSON strings (a parquet
column needs one type); rows are converted lazily, so a bad row surfaces as :class:`BadRecord`
when it is read, and the reader counts and skips it (:class:`metis.io.tables.SkippedRows`); the
text inside ``<tool_call>`` and ``<answer>`` is not scanned for tags (code may print any tag).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from PIL import Image

from metis.core.images import IMAGE_PLACEHOLDER
from metis.io.tables import RowError, open_table

ROLES = ("system", "user", "assistant", "tool")


class BadRecord(RowError):
    """A row that cannot become a usable trajectory; ``kind`` names the reason (for the counts)."""


# every reason a row is skipped for, with its meaning (reports and docs use these words)
SKIP_REASONS = {
    "unreadable_row": "the row cannot be read (a torn or non-JSON line, not an object, an undecodable cell)",
    "convert_error": "converting the row raised an unexpected error (the detail names it)",
    "bad_messages": "no messages list, a message that is not an object, or an unknown role",
    "bad_content": "a message content that is neither text nor a list of parts (e.g. a number)",
    "bad_row": "the row lacks what a sample needs (a prompt, a ground truth, a user message)",
    "missing_image": "an image file or entry is missing (relative paths resolve against image_root)",
    "corrupt_image": "an image cannot be decoded",
    "image_mismatch": "<image> placeholders and images disagree",
    "bad_tool_call": "a tool call that is not valid JSON with a name, two calls in one turn, or a "
                     "<tool_call> block left unparsed",
    "bad_answer": "two <answer> blocks in one assistant turn",
    "call_and_answer": "one assistant turn holds both a tool call and an <answer>",
    "unbalanced_tags": "a tag opened and never closed (or closed and never opened), or tags nested",
    "tool_call_in_reasoning": "a <tool_call> or <code> left inside the reasoning",
    "no_final_answer": "the last turn is not an assistant <answer>",
    "no_assistant_turn": "no assistant text to learn from",
    "over_length": "longer than max_length tokens",
    "duplicate_id": "an earlier row has the same id",
}


# ---- images -----------------------------------------------------------------------------------
def open_image(obj: Any, image_root: str | Path | None = None, full_decode: bool = True) -> Image.Image:
    """A PIL image from a PIL image, bytes, ``{"bytes", "path"}``, a path, base64 or a data URI.

    Raises :class:`BadRecord` (``missing_image`` or ``corrupt_image``). ``full_decode=False`` only
    reads the header (size and mode), which is enough to count image tokens.
    """
    if isinstance(obj, Image.Image):
        return obj
    if isinstance(obj, dict):
        if obj.get("bytes"):
            return open_image(obj["bytes"], image_root, full_decode)
        if obj.get("path"):
            return open_image(str(obj["path"]), image_root, full_decode)
        raise BadRecord("missing_image", "image entry has neither bytes nor path")
    data: bytes | None = None
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
    elif isinstance(obj, str):
        if obj.startswith("data:image"):
            obj = obj.split(",", 1)[-1]
        path = Path(image_root, obj) if image_root is not None and not os.path.isabs(obj) else Path(obj)
        if _is_file(path):
            data = path.read_bytes()
        else:  # base64 (Thyme stores images so on the hub), else a missing file
            data = _b64(obj)
            if data is None:
                hint = (f"relative paths resolve against image_root={image_root}" if image_root is not None
                        else "set image_root to the folder relative image paths start from")
                raise BadRecord("missing_image", f"no image file {str(path)[:200]} ({hint})")
    if data is None:
        raise BadRecord("missing_image", f"cannot read an image from {type(obj).__name__}")
    try:
        img = Image.open(io.BytesIO(data))
        if full_decode:
            img.load()
        return img
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for broken files
        raise BadRecord("corrupt_image", f"{type(err).__name__}: {str(err)[:120]}") from None


def _is_file(path: Path) -> bool:
    try:
        return len(str(path)) < 4096 and path.is_file()
    except OSError:  # e.g. a base64 string taken for a (too long) file name
        return False


def _b64(text: str) -> bytes | None:
    compact = "".join(text.split())
    if len(compact) < 64:
        return None
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return None


def split_placeholders(text: str) -> list[dict[str, Any]]:
    """``"a<image>b"`` -> text, image and text parts (empty text parts dropped)."""
    parts: list[dict[str, Any]] = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            parts.append({"type": "image"})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def parts_text(parts: Sequence[dict[str, Any]]) -> str:
    """Inverse of :func:`split_placeholders`."""
    return "".join(IMAGE_PLACEHOLDER if p["type"] == "image" else p.get("text") or "" for p in parts)


_TAG_RE = re.compile(r"<(/?)(reason|think|answer|tool_call|code|sandbox_output)>")
_OPAQUE = ("tool_call", "answer")  # their text (code, answers) may hold any tag


def check_tags(text: str) -> Counter:
    """Count the top-level tag blocks of one assistant turn; raise :class:`BadRecord` when tags are
    unbalanced or nested (``unbalanced_tags``) or a tool call sits inside reasoning
    (``tool_call_in_reasoning``). Text inside ``<tool_call>`` and ``<answer>`` is not scanned."""
    blocks: Counter = Counter()
    stack: list[str] = []
    pos = 0
    while (m := _TAG_RE.search(text, pos)) is not None:
        closing, tag = m.group(1) == "/", m.group(2)
        pos = m.end()
        if closing:
            if not stack or stack[-1] != tag:
                raise BadRecord("unbalanced_tags", f"</{tag}> without a matching <{tag}>")
            stack.pop()
            continue
        if stack:
            kind = "tool_call_in_reasoning" if stack[-1] in ("reason", "think") and tag in ("tool_call", "code") \
                else "unbalanced_tags"
            raise BadRecord(kind, f"<{tag}> inside <{stack[-1]}>")
        blocks[tag] += 1
        if tag in _OPAQUE:
            end = text.find(f"</{tag}>", pos)
            if end < 0:
                raise BadRecord("unbalanced_tags", f"<{tag}> never closed")
            pos = end + len(tag) + 3
            continue
        stack.append(tag)
    if stack:
        kind = "tool_call_in_reasoning" if stack[-1] == "code" else "unbalanced_tags"
        raise BadRecord(kind, f"<{stack[-1]}> never closed")
    return blocks


# ---- the record -------------------------------------------------------------------------------
@dataclass
class TrajectoryRecord:
    """One multimodal tool-use trajectory.

    ``messages``: ``{"role", "content": [parts], "tool_call": {"name", "arguments"} | None}``; the
    ``tool_call`` key is set on assistant turns that call a tool. ``images`` are consumed by the
    image parts of all messages in order (user images first, then those of tool observations).
    """

    id: str
    messages: list[dict[str, Any]]
    images: list[Image.Image] = field(default_factory=list)
    final_answer: str | None = None
    ground_truth: list[str] = field(default_factory=list)
    source: str = ""
    source_id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.ground_truth, str):
            self.ground_truth = [self.ground_truth]
        self.ground_truth = [str(g) for g in (self.ground_truth or [])]
        for m in self.messages:
            if isinstance(m.get("content"), str):
                m["content"] = split_placeholders(m["content"])
            m.setdefault("tool_call", None)

    # ---- views --------------------------------------------------------------------------------
    def assistant_turns(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["role"] == "assistant"]

    @property
    def tool_calls(self) -> list[dict[str, Any] | None]:
        """One entry per assistant turn: ``{"name", "arguments"}`` or ``None``."""
        return [m.get("tool_call") for m in self.assistant_turns()]

    @property
    def observations(self) -> list[str]:
        """The text of each tool observation (``<image>`` where its images go)."""
        return [parts_text(m["content"]) for m in self.messages if m["role"] == "tool"]

    @property
    def num_tool_calls(self) -> int:
        return sum(c is not None for c in self.tool_calls)

    def num_image_parts(self) -> int:
        return sum(p["type"] == "image" for m in self.messages for p in m["content"])

    def validate(self, require_answer: bool = True) -> None:
        """Raise :class:`BadRecord` unless the record is trainable (module docstring for the kinds)."""
        for m in self.messages:
            if m["role"] not in ROLES:
                raise BadRecord("bad_row", f"unknown role {m['role']!r}")
        turns = self.assistant_turns()
        if not any(parts_text(m["content"]).strip() for m in turns):
            raise BadRecord("no_assistant_turn", f"record {self.id} has no assistant text")
        if self.num_image_parts() != len(self.images):
            raise BadRecord("image_mismatch", f"{self.num_image_parts()} image parts, {len(self.images)} images")
        for k, m in enumerate(turns):
            blocks = check_tags(parts_text(m["content"]))
            if blocks.get("tool_call", 0) != (1 if m.get("tool_call") else 0):
                raise BadRecord("bad_tool_call", f"assistant turn {k + 1}: {blocks.get('tool_call', 0)} <tool_call> "
                                "block(s) but " + ("a" if m.get("tool_call") else "no") + " parsed tool call")
        if require_answer:
            last = next((m for m in reversed(self.messages) if m["role"] != "system"), None)
            text = parts_text(last["content"]) if last is not None and last["role"] == "assistant" else ""
            if last is None or last["role"] != "assistant" or last.get("tool_call") or "<answer>" not in text:
                raise BadRecord("no_final_answer", f"record {self.id}: the last turn is not an assistant <answer>")

    # ---- rows -----------------------------------------------------------------------------------
    def to_row(self) -> dict[str, Any]:
        """A dict in the stored layout (tool calls and meta as JSON strings, images as PIL)."""
        return {
            "id": self.id,
            "messages": [{"role": m["role"],
                          "content": [{"type": p["type"], "text": p.get("text")} for p in m["content"]],
                          "tool_call": json.dumps(m["tool_call"], ensure_ascii=False) if m.get("tool_call") else None}
                         for m in self.messages],
            "images": list(self.images),
            "final_answer": self.final_answer,
            "ground_truth": list(self.ground_truth),
            "source": self.source,
            "source_id": self.source_id,
            "meta": json.dumps(self.meta, ensure_ascii=False, default=str),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any], image_root: str | Path | None = None,
                 full_decode: bool = True) -> "TrajectoryRecord":
        if not isinstance(row.get("messages"), (list, tuple)) or not row["messages"]:
            raise BadRecord("bad_messages", "row has no messages list")
        messages = []
        for m in row["messages"]:
            if not isinstance(m, dict) or not isinstance(m.get("content"), (list, tuple)):
                raise BadRecord("bad_messages", "a message is not {role, content: [parts]}")
            call = m.get("tool_call")
            messages.append({"role": m["role"],
                             "content": [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p.get("text") or ""}
                                         for p in m["content"]],
                             "tool_call": json.loads(call) if isinstance(call, str) and call else (call or None)})
        meta = row.get("meta") or {}
        return cls(
            id=str(row.get("id", "")), messages=messages,
            images=[open_image(im, image_root, full_decode) for im in row.get("images") or []],
            final_answer=row.get("final_answer"), ground_truth=list(row.get("ground_truth") or []),
            source=row.get("source") or "", source_id=str(row.get("source_id") or ""),
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
        )

    @classmethod
    def from_trajectory(cls, traj: Any, system_prompt: str | None = None) -> "TrajectoryRecord":
        """A rollout (:class:`metis.core.trajectory.Trajectory`) as a record."""
        from metis.data.rollout_records import record_from_trajectory  # lazy: rollout_records imports schema

        return record_from_trajectory(traj, system_prompt=system_prompt)


SCHEMA_COLUMNS = ("id", "messages", "images", "final_answer", "ground_truth", "source", "source_id", "meta")


def features():
    """The ``datasets.Features`` of the stored layout."""
    from datasets import Features, Image as HFImage, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    message = {"role": Value("string"), "content": List(part), "tool_call": Value("string")}
    return Features({
        "id": Value("string"), "messages": List(message), "images": List(HFImage()),
        "final_answer": Value("string"), "ground_truth": List(Value("string")), "source": Value("string"),
        "source_id": Value("string"), "meta": Value("string"),
    })


def to_dataset(records: Iterable[TrajectoryRecord]):
    """A ``datasets.Dataset`` in the stored layout (e.g. to ``push_to_hub``)."""
    from datasets import Dataset

    rows = [r.to_row() for r in records]
    return Dataset.from_list(rows, features=features())


def save_records(records: Iterable[TrajectoryRecord], path: str | Path) -> Path:
    """Write records as parquet (images as bytes). ``path`` ending in ``.parquet`` is one file;
    anything else is a directory holding ``train.parquet``."""
    path = Path(path)
    target = path if path.suffix == ".parquet" else path / "train.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    if not records:
        raise ValueError(f"save_records: no records to write to {target} (an empty parquet cannot be read back)")
    to_dataset(records).to_parquet(str(target))
    return target


# ---- reading ------------------------------------------------------------------------------------
class RecordView(Sequence[TrajectoryRecord]):
    """A lazy sequence of records over a :class:`metis.io.tables.Table` (or a list of rows) and a
    row converter. Indexing converts one row and may raise (:class:`BadRecord` and its parent
    :class:`metis.io.tables.RowError` name the reason). Picklable (DataLoader workers)."""

    def __init__(self, rows: Any, convert: Callable[[dict[str, Any]], TrajectoryRecord]) -> None:
        self.rows, self.convert = rows, convert

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if isinstance(i, int) and not -len(self) <= i < len(self):
            raise IndexError(i)  # the end of the sequence, so `for r in view` stops
        return self.convert(self.rows[i])


def load_records(path_or_hub_id: str | Path, split: str = "train", image_root: str | Path | None = None,
                 layout: str = "auto", full_decode: bool = True, limit: int | None = None) -> RecordView:
    """Records from a local parquet file/dir, a JSON/JSONL file, or a hub dataset id.

    ``layout``: ``auto`` (by columns), ``metis`` (this schema), ``messages`` (Metis-ColdStart,
    DeepEyesV2, LLaMA-Factory sharegpt, any role/content or from/value layout) or ``thyme``.
    Relative image paths resolve against ``image_root``, by default the data file's folder.
    Provenance (``source``) is the dataset's name unless a row names its own ``data_source``.
    Raises ``ValueError`` for a table that holds RL prompts, not trajectories.
    """
    from metis.data.converters import row_converter

    table = open_table(path_or_hub_id, split=split, limit=limit)
    root = image_root if image_root is not None else table.folder
    return RecordView(table, row_converter(table.columns, layout, root, full_decode, source=table.name))


def load_jsonl(path: str | Path, image_root: str | Path | None = None, layout: str = "auto") -> RecordView:
    """Records from JSON lines (or one JSON array); :func:`load_records` on a JSON/JSONL file."""
    return load_records(path, image_root=image_root, layout=layout)


def save_jsonl(records: Iterable[TrajectoryRecord], path: str | Path, image_dir: str | Path | None = None) -> Path:
    """Write records as JSON lines with images as PNG files (paths relative to the file's folder)."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir is not None else path.parent / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for n, rec in enumerate(records):
            row = rec.to_row()
            names = []
            for k, img in enumerate(rec.images):
                file = image_dir / f"{n:06d}_{k}.png"
                img.save(file)
                names.append(os.path.relpath(file, path.parent))
            row["images"] = names
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
