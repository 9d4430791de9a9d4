"""One trajectory schema for the whole project: SFT data, saved rollouts, curation, eval logs.

A :class:`TrajectoryRecord` is a chat (system / user / assistant / tool messages whose content is a
list of ``{"type": "text", "text": ...}`` and ``{"type": "image"}`` parts), the images the image
parts refer to (in order of appearance across all messages), the tool call of each assistant turn,
the final answer, the ground truth, the provenance and a free ``meta`` dict.

Storage is a Hugging Face ``datasets`` dataset (parquet, images as bytes): :func:`save_records` /
:func:`load_records` (a local parquet file or directory, a JSON/JSONL file, or a hub id). Foreign
layouts (Metis-ColdStart, DeepEyesV2, Thyme) are recognised by their columns and converted row by
row through :mod:`metis.data.converters`.

Deliberate simplifications: tool-call arguments and ``meta`` are stored as JSON strings (a parquet
column needs one type); rows are converted lazily, so a bad row surfaces as :class:`BadRecord`
when it is read, and the SFT DataModule counts and skips it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from PIL import Image

from metis.core.images import IMAGE_PLACEHOLDER

ROLES = ("system", "user", "assistant", "tool")


class BadRecord(ValueError):
    """A row that cannot become a usable trajectory; ``kind`` names the reason (for the counts)."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


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
                raise BadRecord("missing_image", f"no image file {str(path)[:200]}")
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

    def validate(self) -> None:
        """Raise :class:`BadRecord` unless the record is trainable."""
        for m in self.messages:
            if m["role"] not in ROLES:
                raise BadRecord("bad_row", f"unknown role {m['role']!r}")
        if not any(parts_text(m["content"]).strip() for m in self.assistant_turns()):
            raise BadRecord("no_assistant_turn", f"record {self.id} has no assistant text")
        if self.num_image_parts() != len(self.images):
            raise BadRecord("image_mismatch", f"{self.num_image_parts()} image parts, {len(self.images)} images")

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
        messages = []
        for m in row["messages"]:
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
        from metis.data.converters import record_from_trajectory  # lazy: converters imports schema

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
    """A lazy sequence of records over a ``datasets.Dataset`` (or a list of rows) and a row converter.

    Indexing converts one row and may raise :class:`BadRecord`. Picklable (DataLoader workers).
    """

    def __init__(self, rows: Any, convert: Callable[[dict[str, Any]], TrajectoryRecord]) -> None:
        self.rows, self.convert = rows, convert

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if isinstance(i, int) and not -len(self) <= i < len(self):
            raise IndexError(i)  # the end of the sequence, so `for r in view` stops
        try:
            row = self.rows[i]
        except (BadRecord, IndexError):
            raise
        except Exception as err:  # noqa: BLE001 - e.g. undecodable cells inside ``datasets``
            raise BadRecord("bad_row", f"row {i}: {type(err).__name__}: {str(err)[:120]}") from None
        return self.convert(row)


def _undecoded(ds):
    """Turn off ``datasets`` image decoding so broken bytes reach our own (counting) decoder."""
    from datasets import Image as HFImage, List

    for name, feat in ds.features.items():
        if isinstance(feat, HFImage):
            ds = ds.cast_column(name, HFImage(decode=False))
        elif isinstance(feat, List) and isinstance(feat.feature, HFImage):
            ds = ds.cast_column(name, List(HFImage(decode=False)))
    return ds


def load_records(path_or_hub_id: str | Path, split: str = "train", image_root: str | Path | None = None,
                 layout: str = "auto", full_decode: bool = True) -> RecordView:
    """Records from a local parquet file/dir, a JSON/JSONL file, or a hub dataset id.

    ``layout``: ``auto`` (by columns), ``metis`` (this schema), ``messages`` (Metis-ColdStart,
    DeepEyesV2, any role/content or from/value layout) or ``thyme``.
    """
    import datasets

    from metis.data.converters import row_converter

    path = Path(str(path_or_hub_id)).expanduser()
    if path.suffix in (".jsonl", ".json"):
        return load_jsonl(path, image_root, layout=layout)
    if path.is_file() and path.suffix == ".parquet":
        ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.is_dir() and (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
    elif path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{path} holds no parquet files")
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
    else:
        ds = datasets.load_dataset(str(path_or_hub_id), split=split)
    ds = _undecoded(ds)
    return RecordView(ds, row_converter(ds.column_names, layout, image_root, full_decode))


def load_jsonl(path: str | Path, image_root: str | Path | None = None, layout: str = "auto") -> RecordView:
    """Records from JSON lines (or one JSON array), images as paths relative to ``image_root``
    (default: the file's folder)."""
    from metis.data.converters import row_converter

    path = Path(path)
    text = path.read_text()
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    if not rows:
        raise ValueError(f"{path} holds no rows")
    root = image_root if image_root is not None else path.parent
    columns = sorted({k for r in rows[:100] for k in r})
    return RecordView(rows, row_converter(columns, layout, root, True))


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
