"""The resumable per-sample results log of the curation stages, and writing kept sets.

Inputs are read by :class:`metis.data.samples.SampleSource`.

:class:`ResultLog` is the JSONL file every stage appends to, one row per sample id
(``{"id", "status", "reason", "details"}``); the last row of an id wins and a torn last line (a
crash mid-write) is ignored.
"""


from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metis.data.schema import TrajectoryRecord, save_records
from metis.io.jsonl import JsonlLog

STATUSES = ("kept", "dropped", "bad_input", "error")
FINAL_STATUSES = ("kept", "dropped")  # rows a rerun does not redo


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
