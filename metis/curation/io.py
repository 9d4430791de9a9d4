"""Reading curation inputs, the resumable per-sample results log, and writing kept sets.

Inputs are the project's trajectory datasets (:mod:`metis.data.schema`: parquet, JSON or JSONL,
any layout :func:`metis.data.converters.row_converter` knows) or RL prompt sets: prompt-only records
in the same schema, or verl-style rows (``prompt``, ``images``, ``data_source``, ``ability``,
``reward_model.ground_truth``, ``extra_info``; the Metis-RL layout). Rows are read through
:mod:`metis.io.tables`, the reader SFT training uses.

:class:`SampleSource` scans the input once (images read header-only) so that every row gets a
stable key and bad rows (unreadable lines, missing or corrupt images, no messages, unbalanced
tags, duplicate ids, ...) are known and counted up front; records are then decoded lazily, batch
by batch.

:class:`ResultLog` is the JSONL file every stage appends to, one row per sample id
(``{"id", "status", "reason", "details"}``); the last row of an id wins and a torn last line (a
crash mid-write) is ignored.

Deliberate simplifications: the whole input is scanned at start (one header-only pass); a row
without an id gets ``row-<index>``; a duplicate id is reported as bad input, not merged; the verl
category comes from keywords of ``ability`` / ``data_source`` unless the row names one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from metis.data.schema import BadRecord, TrajectoryRecord, open_image, save_records, split_placeholders
from metis.io.jsonl import JsonlLog
from metis.io.tables import SkippedRows, open_table, reason_of

STATUSES = ("kept", "dropped", "bad_input", "error")
FINAL_STATUSES = ("kept", "dropped")  # rows a rerun does not redo
CATEGORIES = ("perception", "search", "math")
_SEARCH_WORDS = ("search", "wiki", "web", "news", "fact", "knowledge", "entity")
_MATH_WORDS = ("math", "arith", "geometr", "logic", "reason", "calc", "puzzle", "algebra")


def category_of(*texts: Any) -> str:
    """perception / search / math from free text such as ``ability`` and ``data_source``."""
    blob = " ".join(str(t).lower() for t in texts if t)
    for name in CATEGORIES:
        if name in blob:
            return name
    if any(w in blob for w in _SEARCH_WORDS):
        return "search"
    if any(w in blob for w in _MATH_WORDS):
        return "math"
    return "perception"


# ---- verl-style RL prompt rows ------------------------------------------------------------------
def is_verl_layout(columns: Iterable[str]) -> bool:
    cols = set(columns)
    return "prompt" in cols and "messages" not in cols and "conversations" not in cols


def from_verl_row(row: dict[str, Any], index: int, image_root: str | Path | None = None,
                  full_decode: bool = True) -> TrajectoryRecord:
    """A verl RL row (Metis-RL, DeepEyesV2 RL) as a prompt-only record."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        prompt = json.loads(prompt)
    if not prompt:
        raise BadRecord("bad_row", "row has an empty 'prompt'")
    messages = []
    for m in prompt:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRecord("bad_row", f"prompt entry {str(m)[:80]!r} is not a role/content message")
        messages.append({"role": m["role"], "content": split_placeholders(str(m.get("content") or "")), "tool_call": None})
    raw_images = list(row.get("images") or [])
    n_parts = sum(p["type"] == "image" for m in messages for p in m["content"])
    if n_parts == 0 and raw_images:  # no placeholders: images go in front of the first user text
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            raise BadRecord("bad_row", "images but no user message")
        first["content"] = [{"type": "image"} for _ in raw_images] + first["content"]
    elif n_parts != len(raw_images):
        raise BadRecord("image_mismatch", f"{n_parts} <image> placeholders for {len(raw_images)} images")
    images = [open_image(im, image_root, full_decode) for im in raw_images]
    extra = row.get("extra_info") or {}
    extra = json.loads(extra) if isinstance(extra, str) else dict(extra)
    reward = row.get("reward_model") or {}
    truth = reward.get("ground_truth") if isinstance(reward, dict) else None
    if truth in (None, ""):
        truth = extra.get("answer")
    if truth in (None, ""):
        raise BadRecord("bad_row", "no ground truth (reward_model.ground_truth / extra_info.answer)")
    truths = [str(t) for t in truth] if isinstance(truth, (list, tuple)) else [str(truth)]
    rid = str(extra.get("index") if extra.get("index") is not None else row.get("id", f"row-{index}"))
    source = str(row.get("data_source") or "verl")
    meta = {"category": row.get("category") or category_of(row.get("ability"), source),
            "ability": row.get("ability"), "extra_info": {k: v for k, v in extra.items() if k != "question"},
            "layout": "verl"}
    return TrajectoryRecord(id=rid, messages=messages, images=images, final_answer=None, ground_truth=truths,
                            source=source, source_id=rid, meta=meta)


# ---- samples ------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One input row: its key, and either a record or why it cannot be used."""

    index: int
    id: str
    record: TrajectoryRecord | None = None
    error: str | None = None  # bad-input kind (missing_image, bad_row, duplicate_id, ...)
    detail: str = ""


class SampleSource:
    """The rows of one input (:func:`metis.io.tables.open_table`), keyed by sample id, decoded lazily.

    ``trajectories=True`` (the SFT stages) refuses an RL prompt table and validates every record
    (:meth:`TrajectoryRecord.validate`; ``require_answer=False`` keeps trajectories without a final
    answer); ``False`` (``rl_pass_rate``) takes verl rows, prompt-only records or trajectories.
    Every unusable row is counted by reason (``skipped``, listed in ``skipped_rows_file``); more
    than ``max_skipped_fraction`` of them stops before any stage runs (:class:`TooManySkipped`).
    """

    def __init__(self, path: str | Path, image_root: str | Path | None = None, layout: str = "auto",
                 limit: int | None = None, trajectories: bool = False, require_answer: bool = True,
                 max_skipped_fraction: float = 1.0, skipped_rows_file: str | Path | None = None) -> None:
        self.path = Path(str(path)).expanduser()
        if not self.path.exists():
            raise FileNotFoundError(f"curation input {self.path} does not exist")
        self.table = open_table(self.path, limit=limit)
        self.columns = self.table.columns
        self.image_root = image_root if image_root is not None else self.table.folder
        verl = layout == "verl" or (layout == "auto" and is_verl_layout(self.columns))
        self.layout = "verl" if verl else layout
        if verl and trajectories:
            raise ValueError(f"curation input {self.path} holds RL prompts (verl 'prompt' rows), but this stage "
                             "expects SFT trajectories (raw_sft=...); RL prompts go to stage=rl_pass_rate")
        self.trajectories, self.require_answer = trajectories, require_answer
        self.skipped = SkippedRows(f"curation input {self.path.name}", max_skipped_fraction,
                                   file=skipped_rows_file, bound_key="max_skipped_fraction")
        self._convert = self._converter(full_decode=True)
        self.ids: list[str] = []
        self.errors: dict[int, tuple[str, str]] = {}
        self._scan()

    def _converter(self, full_decode: bool) -> Callable[[dict[str, Any], int], TrajectoryRecord]:
        if self.layout == "verl":
            return lambda row, i: from_verl_row(row, i, self.image_root, full_decode)
        from metis.data.converters import row_converter

        conv = row_converter(self.columns, self.layout, self.image_root, full_decode, source=self.table.name)

        def convert(row: dict[str, Any], i: int) -> TrajectoryRecord:
            rec = conv(row)
            if self.trajectories:
                rec.validate(require_answer=self.require_answer)
            return rec

        return convert

    def _scan(self) -> None:
        header_only = self._converter(full_decode=False)
        seen: set[str] = set()
        for i in range(len(self.table)):
            rid = f"row-{i}"
            try:
                row = self.table[i]
                if row.get("id") not in (None, ""):
                    rid = str(row["id"])
                rid = header_only(row, i).id or rid
            except Exception as err:  # noqa: BLE001 - every failure is a bad-input kind
                self.errors[i] = reason_of(err)
            if rid in seen:
                self.errors[i] = ("duplicate_id", f"id {rid!r} already used by an earlier row")
                rid = f"{rid}#row-{i}"
            if i in self.errors:
                self.skipped.skip(i, *self.errors[i], row_id=rid)
            seen.add(rid)
            self.ids.append(rid)
        self.skipped.finish(len(self.table))

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Sample:
        """The sample of row ``i`` (images fully decoded); never raises for bad data."""
        if i in self.errors:
            kind, detail = self.errors[i]
            return Sample(i, self.ids[i], error=kind, detail=detail)
        try:
            rec = self._convert(self.table[i], i)
        except Exception as err:  # noqa: BLE001 - the header scan passed but the bytes are broken
            kind, detail = reason_of(err)
            return Sample(i, self.ids[i], error=kind, detail=detail)
        rec.id = self.ids[i]
        return Sample(i, self.ids[i], record=rec)


# ---- results log --------------------------------------------------------------------------------
class ResultLog(JsonlLog):
    """Append-only JSONL of per-sample results (:class:`metis.io.jsonl.JsonlLog`); the last row of an id wins."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, sort_keys=True, default=str)

    @property
    def torn_lines(self) -> int:
        """Lines the last :meth:`read` skipped (a crash mid-write: those samples are simply redone)."""
        return self.skipped_lines

    def read(self) -> dict[str, dict[str, Any]]:
        return self.latest("id")

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` in one call and make them durable before returning."""
        for row in rows:
            if row.get("status") not in STATUSES:
                raise ValueError(f"result row {row.get('id')!r} has status {row.get('status')!r}; known: {STATUSES}")
        super().append(rows)


def write_records_atomic(records: list[TrajectoryRecord], path: str | Path) -> Path:
    """Parquet through :func:`metis.data.schema.save_records`, swapped in only once complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.parquet")
    if records:
        save_records(records, tmp)
    else:  # ``Dataset.from_list([])`` cannot take the features: an empty table with the schema's columns
        from datasets import Dataset

        from metis.data.schema import SCHEMA_COLUMNS, features

        Dataset.from_dict({c: [] for c in SCHEMA_COLUMNS}, features=features()).to_parquet(str(tmp))
    os.replace(tmp, path)
    return path
