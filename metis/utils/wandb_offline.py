"""Read the history of an offline W&B run (``run-*.wandb``) without a server.

wandb >= 0.2x no longer ships a Python reader for its transaction log, so this implements the
documented LevelDB-style log format: a 7-byte file header (``:W&B``, magic ``0xBEE1``, version),
then 32 KiB blocks of chunks ``crc32 (4) | length (2) | type (1) | payload``, chunk types FULL=1,
FIRST=2, MIDDLE=3, LAST=4; each assembled payload is a ``wandb.proto.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        space = BLOCK - pos % BLOCK
        if space < HEADER:  # block trailer padding
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
        else:
            break


def read_records(run_dir: str | Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(run_dir)
    files = [path] if path.is_file() else sorted(path.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file under {run_dir}")
    for payload in _payloads(files[0]):
        rec = pb.Record()
        try:
            rec.ParseFromString(payload)
        except Exception:  # a torn last record of a killed run
            continue
        yield rec


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every logged history row as ``{metric: value}`` (``_step`` included)."""
    rows = []
    for rec in read_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in rec.history.item})
    return rows


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The run config as logged (``log_hyperparams``), flattened keys as W&B stores them."""
    config: dict[str, Any] = {}
    for rec in read_records(run_dir):
        if rec.WhichOneof("record_type") == "config":
            for it in rec.config.update:
                config[it.key or "/".join(it.nested_key)] = json.loads(it.value_json)
    return config
