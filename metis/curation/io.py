"""The resumable per-sample results log of the curation stages, and writing kept sets.

Inputs are read by :class:`metis.data.samples.SampleSource`.

:class:`ResultLog` is the JSONL file every stage appends to, one row per sample id
(``{"id", "status", "reason", "details"}``); the last row of an id wins and a torn last line (a
crash mid-write) is ignored.
"""


from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metis.data.schema import TrajectoryRecord, save_records

STATUSES = ("kept", "dropped", "bad_input", "error")
FINAL_STATUSES = ("kept", "dropped")  # rows a rerun does not redo


# ---- results log --------------------------------------------------------------------------------
class ResultLog:
    """Append-only JSONL of per-sample results; the last row of an id wins."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.torn_lines = 0

    def read(self) -> dict[str, dict[str, Any]]:
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        with self.path.open("r", encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                    rows[str(row["id"])] = row
                except (ValueError, KeyError, TypeError):
                    self.torn_lines += 1  # a crash mid-write: that sample is simply redone
        return rows

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` in one call and make them durable before returning."""
        if not rows:
            return
        for row in rows:
            if row.get("status") not in STATUSES:
                raise ValueError(f"result row {row.get('id')!r} has status {row.get('status')!r}; known: {STATUSES}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True, default=str) + "\n" for r in rows)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())

    def set_aside(self) -> Path | None:
        """Move an existing log to ``<name>.bak`` (a fresh start that loses nothing)."""
        if not self.path.exists():
            return None
        bak = self.path.with_name(self.path.name + ".bak")
        os.replace(self.path, bak)
        return bak


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
