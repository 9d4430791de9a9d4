"""metis.io.jsonl: torn lines, last-row-wins, durable and thread-safe appends."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from metis.io.jsonl import JsonlLog, iter_jsonl


def test_torn_last_line_is_skipped_counted_and_logged(tmp_path, caplog):
    log = JsonlLog(tmp_path / "log.jsonl")
    assert list(log.rows()) == [] and log.skipped_lines == 0  # no file yet: nothing, no error
    log.append([{"id": "a", "v": 1}, {"id": "b", "v": 2}])
    with open(log.path, "a", encoding="utf-8") as fh:
        fh.write("\n[1, 2]\nnot json\n")  # a blank line (ignored), a non-object and a garbage line
        fh.write('{"id": "c", "v"')  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="metis.io.jsonl"):
        rows = list(log.rows())
    assert [(n, r["id"]) for n, r in rows] == [(1, "a"), (2, "b")]
    assert log.skipped_lines == 3
    assert sum("unreadable line" in m for m in caplog.messages) == 3 and "log.jsonl:6" in caplog.text
    assert [r["id"] for _, r in iter_jsonl(log.path)] == ["a", "b"]


def test_an_append_after_a_torn_line_is_not_glued_to_it(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    log.path.write_text('{"id": "a", "v": 1}\n{"id": "b", "v"', encoding="utf-8")
    log.append([{"id": "c", "v": 3}])
    assert log.latest("id") == {"a": {"id": "a", "v": 1}, "c": {"id": "c", "v": 3}}
    assert log.skipped_lines == 1  # only the torn line itself is lost
    assert log.path.read_text(encoding="utf-8").endswith('{"id": "b", "v"\n{"id": "c", "v": 3}\n')


def test_last_row_of_a_key_wins_and_rows_without_it_are_skipped(tmp_path):
    log = JsonlLog(tmp_path / "sub" / "log.jsonl")  # parent folders are created by the first append
    log.append([{"id": "a", "status": "error"}, {"id": 7, "status": "kept"}])
    log.append([{"id": "a", "status": "kept"}, {"status": "no id"}, {"id": None, "status": "null id"}])
    log.append([{"id": "7", "status": "dropped"}])
    latest = log.latest("id")
    assert latest == {"a": {"id": "a", "status": "kept"}, "7": {"id": "7", "status": "dropped"}}
    assert log.skipped_lines == 2
    assert log.latest("missing") == {} and log.skipped_lines == 6
    assert JsonlLog(tmp_path / "nothing.jsonl").latest("id") == {}


class SplitWrites:
    """A file whose every write reaches the disk in two halves, with a pause between them."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, blob: bytes) -> int:
        half = len(blob) // 2
        self._fh.write(blob[:half])
        self._fh.flush()
        time.sleep(0.0005)  # another thread's unlocked write would land here
        return half + self._fh.write(blob[half:])

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self) -> "SplitWrites":
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


@pytest.mark.parametrize("split_writes", [False, True], ids=["os-writes", "split-writes"])
def test_concurrent_appends_from_threads_lose_and_tear_nothing(tmp_path, monkeypatch, split_writes):
    """Rows appended from 8 threads at once all come back whole. ``split-writes`` makes each write
    non-atomic (as a large write or a network file system may be), so only the lock keeps rows apart."""
    if split_writes:
        real_open = Path.open
        monkeypatch.setattr(Path, "open", lambda self, mode="r", *a, **kw: SplitWrites(real_open(self, mode, *a, **kw))
                            if mode == "a+b" else real_open(self, mode, *a, **kw))
    path = tmp_path / "log.jsonl"
    threads_n, per_thread = 8, 60
    payload = "x" * 20_000  # rows larger than the I/O buffers, so an unlocked write could interleave
    start = threading.Barrier(threads_n)
    shared = JsonlLog(path, fsync=False)

    def worker(t: int) -> None:
        own = JsonlLog(str(path), fsync=False)  # another instance, another spelling: the same lock
        start.wait()
        for i in range(per_thread):
            (shared if i % 2 else own).append([{"id": f"{t}-{i}", "t": t, "i": i, "pad": payload}])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    reader = JsonlLog(path)
    rows = [r for _, r in reader.rows()]
    assert reader.skipped_lines == 0 and len(rows) == threads_n * per_thread
    assert set(reader.latest("id")) == {f"{t}-{i}" for t in range(threads_n) for i in range(per_thread)}
    for t in range(threads_n):  # each thread's rows are in its own order
        assert [r["i"] for r in rows if r["t"] == t] == list(range(per_thread))


def test_append_is_all_or_nothing_for_unencodable_rows_and_fsyncs(tmp_path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    log = JsonlLog(tmp_path / "log.jsonl")
    log.append([{"id": "a"}])
    assert len(synced) == 1
    with pytest.raises(TypeError):
        log.append([{"id": "b"}, {"id": "c", "obj": object()}])
    assert [r["id"] for _, r in log.rows()] == ["a"] and len(synced) == 1
    log.append([])  # nothing to write: no write, no fsync
    assert len(synced) == 1
    JsonlLog(log.path, fsync=False).append([{"id": "d"}])
    assert len(synced) == 1

    lenient = JsonlLog(tmp_path / "sorted.jsonl", sort_keys=True, default=str)
    lenient.append([{"z": 1, "a": tmp_path}])
    assert lenient.path.read_text(encoding="utf-8") == json.dumps({"a": str(tmp_path), "z": 1}) + "\n"


def test_set_aside_moves_the_file_and_starts_fresh(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl")
    assert log.set_aside() is None
    log.append([{"id": "a"}])
    bak = log.set_aside()
    assert bak == tmp_path / "log.jsonl.bak" and not log.exists() and bak.exists()
    assert log.latest("id") == {}
