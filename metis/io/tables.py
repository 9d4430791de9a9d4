"""Row-by-row reading of data tables, with every bad row counted by reason instead of stopping a run.

One reading path for every dataset the project consumes (SFT trajectories, curation inputs; RL
prompts and evaluation sets can use it the same way)::

    from metis.io.tables import SkippedRows, open_table, read_rows

    table = open_table("data/train.jsonl")          # parquet file / folder of parquet / JSON / JSONL / hub id
    table.columns, table.name, table.folder, len(table)
    skips = SkippedRows("SFT data", max_fraction=0.1, file="run/skipped_rows.jsonl",
                        bound_key="data.max_skipped_fraction")
    for i, rec in read_rows(table, convert, skips):  # convert(row) may raise anything
        ...
    skips.finish(len(table))   # one log line per run; raises TooManySkipped past the bound

* :func:`open_table` gives a :class:`Table`: ``len`` and random access ``table[i] -> dict``.
  Memory stays bounded: parquet and hub datasets are memory-mapped Arrow (``datasets``; image
  columns left undecoded so a corrupt image is a row-level failure, not a crash); a JSONL file is
  indexed by line offsets and each line is parsed when its row is read. A row that cannot be
  read (a torn JSONL line, a line that is not an object, an undecodable Arrow cell) raises
  :class:`RowError` with kind ``unreadable_row``.
* :class:`RowError` is a per-row failure with a ``kind`` (the reason it is counted under).
  Any other exception raised while handling a row is counted as ``convert_error``.
* :class:`SkippedRows` counts failures by reason, keeps a few examples, appends one JSON line per
  skipped row to ``file`` (``{"row", "id", "reason", "detail"}``), logs one summary line and stops
  the run (:class:`TooManySkipped`, naming ``bound_key``) only when the skipped fraction exceeds
  ``max_fraction``.

Deliberate simplifications: a JSON file holding one array is parsed whole (use JSONL for large
sets); rows are read one at a time (no prefetch); the skipped-rows file is appended to as rows are
skipped, so two processes given the same file would interleave lines (give it to one rank only).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
_GENERIC_STEMS = {"train", "test", "val", "valid", "validation", "data", "dev"}


class RowError(ValueError):
    """A row that cannot be used; ``kind`` is the reason it is counted under (e.g. ``unreadable_row``)."""

    def __init__(self, kind: str, message: str = "") -> None:
        super().__init__(f"{kind}: {message}" if message else kind)
        self.kind = kind


class TooManySkipped(ValueError):
    """More rows were skipped than the configured bound allows."""


def reason_of(err: BaseException) -> tuple[str, str]:
    """``(kind, detail)`` of a per-row failure: a :class:`RowError`'s kind, else ``convert_error``."""
    if isinstance(err, RowError):
        return err.kind, str(err)[:300]
    return "convert_error", f"{type(err).__name__}: {str(err)[:300]}"


# ---- tables -------------------------------------------------------------------------------------
class _JsonLines:
    """Random access to the lines of a JSONL file through their byte offsets (picklable)."""

    def __init__(self, path: Path, limit: int | None) -> None:
        self.path, self.offsets, self.line_numbers = path, [], []
        with open(path, "rb") as fh:
            pos = 0
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    self.offsets.append(pos)
                    self.line_numbers.append(number)
                    if limit is not None and len(self.offsets) >= limit:
                        break
                pos += len(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Any:
        with open(self.path, "rb") as fh:
            fh.seek(self.offsets[i])
            line = fh.readline()
        try:
            return json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RowError("unreadable_row", f"line {self.line_numbers[i]} of {self.path.name} is not JSON ({err})") from None

    def columns(self, probe: int = 200) -> list[str]:
        cols: set[str] = set()
        for i in range(min(probe, len(self))):
            try:
                row = self[i]
            except RowError:
                continue
            if isinstance(row, dict):
                cols.update(row)
        return sorted(cols)


class Table(Sequence[dict]):
    """The rows of one data source: ``len``, ``table[i] -> dict`` (raises :class:`RowError`).

    ``columns``: the column names (JSON: the keys of the first rows); ``name``: the dataset's name
    for provenance (hub id, or the file / folder name); ``folder``: where relative paths inside
    the rows (images) resolve by default (``None`` for a hub dataset). Picklable.
    """

    def __init__(self, rows: Any, columns: Sequence[str], name: str, folder: Path | None) -> None:
        self.rows, self.columns, self.name, self.folder = rows, list(columns), name, folder

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if not isinstance(i, int):
            raise TypeError("Table indices are ints")
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        try:
            row = self.rows[i]
        except RowError:
            raise
        except Exception as err:  # noqa: BLE001 - e.g. an undecodable cell inside ``datasets``
            raise RowError("unreadable_row", f"row {i}: {type(err).__name__}: {str(err)[:200]}") from None
        if not isinstance(row, dict):
            raise RowError("unreadable_row", f"row {i} is a {type(row).__name__}, not an object")
        return row


def dataset_name(source: str | Path) -> str:
    """The name that provenance records: a hub id as is, else the file or folder name (a generic
    file name such as ``train.parquet`` is prefixed by its folder's)."""
    path = Path(str(source)).expanduser()
    if not path.exists():
        return str(source)
    if path.is_file():
        stem = path.name.split(".")[0].split("-")[0].lower()
        return f"{path.parent.name}/{path.name}" if stem in _GENERIC_STEMS and path.parent.name else path.name
    return path.name


def _undecoded(ds):
    """Turn off ``datasets`` image decoding so broken bytes reach the caller's own (counting) decoder."""
    from datasets import Image as HFImage, List

    for name, feat in ds.features.items():
        if isinstance(feat, HFImage):
            ds = ds.cast_column(name, HFImage(decode=False))
        elif isinstance(feat, List) and isinstance(feat.feature, HFImage):
            ds = ds.cast_column(name, List(HFImage(decode=False)))
    return ds


def open_table(source: str | Path, split: str = "train", limit: int | None = None) -> Table:
    """A :class:`Table` over a parquet file, a folder of parquet files (or a ``save_to_disk``
    folder), a JSON array file, a JSONL file, or a hub dataset id (``split``). ``limit``: the first
    rows only. Raises ``FileNotFoundError`` / ``ValueError`` (one line naming the source) when the
    source as a whole cannot be read."""
    path = Path(str(source)).expanduser()
    name = dataset_name(source)
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip()
        if head.startswith(b"["):
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{path} is not a valid JSON array ({err}); one row per line (JSONL) "
                                 f"lets the good rows through") from None
            rows = rows[:limit] if limit is not None else rows
            cols = sorted({k for r in rows[:200] if isinstance(r, dict) for k in r})
            return Table(rows, cols, name, path.parent)
        lines = _JsonLines(path, limit)
        return Table(lines, lines.columns(), name, path.parent)
    import datasets

    if path.is_dir() and (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
        folder: Path | None = path
    elif path.exists():
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
        if not files or (path.is_file() and path.suffix != ".parquet"):
            raise FileNotFoundError(f"{path} holds no parquet, JSON or JSONL data")
        import pyarrow.parquet as pq

        if all(pq.read_metadata(f).num_rows == 0 for f in files):  # ``datasets`` cannot load an empty table
            return Table([], list(pq.read_schema(files[0]).names), name, path if path.is_dir() else path.parent)
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
        folder = path if path.is_dir() else path.parent
    elif str(source).startswith((".", "/", "~")) or Path(str(source)).suffix in (".parquet", ".json", ".jsonl"):
        raise FileNotFoundError(f"data source {source} does not exist")
    else:
        ds = datasets.load_dataset(str(source), split=split)
        folder = None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    ds = _undecoded(ds)
    return Table(ds, ds.column_names, name, folder)


# ---- skipped rows -------------------------------------------------------------------------------
class SkippedRows:
    """Counts of skipped rows by reason, a few examples each, and the ``skipped_rows`` file.

    ``what`` names the data in messages ("SFT data"); ``bound_key`` names the setting of
    ``max_fraction`` in the error that stops a run.
    """

    def __init__(self, what: str, max_fraction: float = 0.1, file: str | Path | None = None,
                 bound_key: str = "max_skipped_fraction", examples: int = 3) -> None:
        if not 0.0 <= float(max_fraction) <= 1.0:
            raise ValueError(f"{bound_key} must be in [0, 1], got {max_fraction}")
        self.what, self.max_fraction, self.bound_key = what, float(max_fraction), bound_key
        self.file = Path(file) if file else None
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._n_examples = examples
        self._fh: Any = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def skip(self, index: int, err: BaseException | str, detail: str = "", row_id: str | None = None) -> str:
        """Count row ``index`` as skipped (``err``: the exception, or a kind); returns the kind."""
        kind, text = (err, detail) if isinstance(err, str) else reason_of(err)
        self.counts[kind] += 1
        seen = self.examples.setdefault(kind, [])
        if len(seen) < self._n_examples:
            seen.append(f"row {index}: {text}"[:300])
        if self.file is not None:
            if self._fh is None:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.file, "w", encoding="utf-8")
            self._fh.write(json.dumps({"row": index, "id": row_id, "reason": kind, "detail": text},
                                      ensure_ascii=False, default=str) + "\n")
        log.debug("%s: skipping row %d (%s): %s", self.what, index, kind, text)
        return kind

    def finish(self, seen: int) -> dict[str, int]:
        """Close the file, log the counts, and raise :class:`TooManySkipped` past the bound."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        where = f"; every one is listed in {self.file}" if self.file is not None and self.total else ""
        if self.total:
            examples = "; ".join(f"{k}: {v[0]}" for k, v in self.examples.items() if v)
            log.warning("%s: skipped %d of %d rows %s%s (e.g. %s)", self.what, self.total, seen, dict(self.counts),
                        where, examples[:600])
        if seen and self.total / seen > self.max_fraction:
            raise TooManySkipped(f"{self.what}: {self.total} of {seen} rows are unusable ({dict(self.counts)}), "
                                 f"more than {self.bound_key}={self.max_fraction}{where}; fix the data or its "
                                 f"layout/image_root, or raise {self.bound_key}")
        return dict(self.counts)


def read_rows(table: Sequence[Any], fn: Callable[[Any], T], skipped: SkippedRows,
              indices: Iterable[int] | None = None) -> Iterator[tuple[int, T]]:
    """``(i, fn(table[i]))`` for every row that reads and converts; every failure goes to ``skipped``."""
    for i in range(len(table)) if indices is None else indices:
        try:
            value = fn(table[i])
        except Exception as err:  # noqa: BLE001 - one bad row never stops a run
            skipped.skip(i, err)
            continue
        yield i, value


__all__ = ["RowError", "TooManySkipped", "Table", "SkippedRows", "open_table", "read_rows", "reason_of",
           "dataset_name"]
