"""The resumable, append-only JSON-lines log every cache and result file of Metis is written with.

The chat-client reply cache, the judge verdict cache, curation's ``results.jsonl`` and evaluation's
``predictions.jsonl`` all grow one row at a time while a run works, must survive the run being killed
at any instant, and are read back by the rerun that resumes it. :class:`JsonlLog` is that file:

* :meth:`JsonlLog.append` writes its rows, one JSON object per line, in one write; flushes; and, with
  ``fsync=True`` (the default), fsyncs before returning, so an appended row survives a crash of the
  process or the machine. Appends from threads of one process are serialized (one lock per file,
  shared by every :class:`JsonlLog` of that path). When the file does not end with a newline (the torn
  tail of a writer killed mid-line), a newline is written first, so the new rows never get glued onto
  the broken line and lost with it.
* :meth:`JsonlLog.rows` reads it back: a line that is not a JSON object (a torn last line, garbage) is
  skipped, counted in :attr:`JsonlLog.skipped_lines` and logged -- never fatal; blank lines are ignored.
* :meth:`JsonlLog.latest` is the resume lookup: key value -> the last row carrying it (rows without
  the key are skipped and counted too).

Deliberate simplifications: one writing process per file (threads are safe; two processes appending
to the same file are not locked against each other); a resume reads the whole file (no index); rows
are never compacted, so a key rewritten often keeps its old rows on disk.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("metis.io.jsonl")

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    """The process-wide append lock of ``path`` (the same lock for every spelling of the path)."""
    name = os.path.abspath(path)
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.Lock())


class JsonlLog:
    """An append-only JSON-lines file of dict rows that tolerates a torn last line.

    Args:
        path: the file; it and its parent folders are created by the first append.
        fsync: fsync after each append (durable across a machine crash, ~1 ms per call on a local disk).
        sort_keys: write each row's keys sorted (a stable byte layout for files compared across runs).
        default: ``json.dumps`` fallback for values JSON cannot hold (e.g. ``str``); None raises ``TypeError``.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True, sort_keys: bool = False,
                 default: Callable[[Any], Any] | None = None) -> None:
        self.path = Path(path)
        self.fsync, self.sort_keys, self.default = fsync, sort_keys, default
        self.skipped_lines = 0  # lines the last read skipped (unreadable, not an object, or without the key)
        self._lock = _lock_for(self.path)

    def exists(self) -> bool:
        return self.path.exists()

    # ------------------------------------------------------------------ writing
    def encode(self, row: Mapping[str, Any]) -> str:
        """One row as its line (with the newline)."""
        return json.dumps(row, ensure_ascii=False, sort_keys=self.sort_keys, default=self.default) + "\n"

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append ``rows`` in one write, flushed (and fsynced) before returning; thread-safe.

        Every row is encoded before anything is written, so a row JSON cannot hold raises ``TypeError``
        and leaves the file untouched.
        """
        blob = "".join(self.encode(r) for r in rows).encode("utf-8")
        if not blob:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as fh:
                if fh.seek(0, os.SEEK_END) > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":  # a torn line left by a killed writer: end it first
                        blob = b"\n" + blob
                fh.write(blob)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())

    def set_aside(self) -> Path | None:
        """Move the file to ``<name>.bak`` (a fresh start that deletes nothing); None when there was none."""
        with self._lock:
            if not self.path.exists():
                return None
            bak = self.path.with_name(self.path.name + ".bak")
            os.replace(self.path, bak)
            return bak

    # ------------------------------------------------------------------ reading
    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(line number, row)`` for every line holding a JSON object; nothing when the file is missing.

        Other lines (torn, not JSON, not an object) are skipped, logged and counted in
        :attr:`skipped_lines` (reset at the start of each read); blank lines are ignored.
        """
        self.skipped_lines = 0
        if not self.path.exists():
            return
        with self.path.open("r", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    self.skipped_lines += 1
                    log.warning("%s:%d: unreadable line skipped (a torn write?)", self.path, n)
                    continue
                yield n, row

    def latest(self, key: str) -> dict[str, dict[str, Any]]:
        """``str(row[key])`` -> the last row with that value (rows without ``key`` are skipped and counted)."""
        out: dict[str, dict[str, Any]] = {}
        missing = 0
        for n, row in self.rows():
            if row.get(key) is None:
                missing += 1
                log.warning("%s:%d: row without %r skipped", self.path, n, key)
                continue
            out[str(row[key])] = row
        self.skipped_lines += missing
        return out


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of each JSON object line of ``path`` (see :meth:`JsonlLog.rows`)."""
    return JsonlLog(path).rows()
