"""Fingerprints that decide whether stored predictions may be reused, and the provenance of a run.

- :func:`run_fingerprint`: sha256 over the checkpoint (the model config and a digest of its local
  weight files), the system prompt with the tool specs, and the loop settings (limits, greedy,
  engine). Every prediction record carries it; a resumed run reuses a record only under the same
  fingerprint, and :func:`fingerprint_mismatch` says in one line which part changed.
- :func:`task_input_sha`: sha256 of what the model sees of one sample (question text and image
  pixels). A record whose input changed since (a data fix) is regenerated; the ground truth is
  not part of it, since scoring always reads the current data.
- :func:`provenance`: project commit, checkpoint and data digests, date, for ``results.json``.

Checkpoint digests read each weight file's name, size, first and last MiB (a full hash of 16 GB
of weights would take minutes per run); data digests hash the whole file(s).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from metis.utils.files import CHUNK, file_sha256  # noqa: F401 (file_sha256: part of this module's API)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".model", ".txt")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


def data_digest(path: str | Path | None) -> str | None:
    """sha256 of a data file, or of a folder's files (relative names and contents); None when absent."""
    if not path or not Path(path).expanduser().exists():
        return None
    p = Path(path).expanduser()
    if p.is_file():
        return file_sha256(p)
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith(".")):
        h.update(str(f.relative_to(p)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def checkpoint_digest(paths: Iterable[str | None]) -> str | None:
    """A sampled digest of the local checkpoint files under ``paths`` (None when none is local)."""
    h = hashlib.sha256()
    seen = False
    for raw in paths:
        if not raw or not Path(str(raw)).expanduser().exists():
            continue
        root = Path(str(raw)).expanduser()
        files = [root] if root.is_file() else sorted(f for f in root.rglob("*") if f.is_file()
                                                     and f.suffix.lower() in WEIGHT_SUFFIXES)
        for f in files:
            seen = True
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(CHUNK))
                if size > 2 * CHUNK:
                    fh.seek(size - CHUNK)
                    h.update(fh.read(CHUNK))
    return h.hexdigest() if seen else None


def fingerprint_parts(model_cfg: dict[str, Any], system_prompt: str, tool_specs: list[dict[str, Any]],
                      loop_cfg: dict[str, Any], greedy: bool,
                      engine_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parts of :func:`run_fingerprint`, each hashed (kept in ``fingerprint.json`` to explain a mismatch)."""
    model = {k: v for k, v in model_cfg.items() if k not in ("cache_dir", "attn_implementation",
                                                              "gradient_checkpointing")}
    weights = checkpoint_digest([model_cfg.get("init_from"), model_cfg.get("name_or_path")])
    engine = {k: v for k, v in (engine_cfg or {}).items() if k in ("_target_",) or (not greedy and k in (
        "temperature", "top_p", "top_k"))}
    return {"checkpoint": _sha([model, weights]), "prompt": _sha([system_prompt, tool_specs]),
            "loop": _sha([{k: v for k, v in loop_cfg.items() if k != "tool_workers"}, bool(greedy), engine]),
            "checkpoint_weights": weights}


def run_fingerprint(parts: dict[str, Any]) -> str:
    return _sha([parts["checkpoint"], parts["prompt"], parts["loop"]])[:16]


def fingerprint_mismatch(old: dict[str, Any] | None, new: dict[str, Any]) -> str:
    """Which parts differ, in words ("checkpoint, loop settings"); "unknown" without the old parts."""
    if not old:
        return "unknown (no fingerprint.json next to the predictions)"
    names = {"checkpoint": "checkpoint", "prompt": "system prompt / tools", "loop": "loop settings"}
    changed = [names[k] for k in names if old.get(k) != new.get(k)]
    return ", ".join(changed) or "unknown"


def task_input_sha(task) -> str:
    """sha256 of the question text and image pixels of a task (what the model sees of it)."""
    h = hashlib.sha256(str(task.question).encode())
    for im in task.images:
        h.update(f"{im.mode}{im.size}".encode())
        h.update(im.tobytes())
    return h.hexdigest()[:16]


def git_commit(root: str | Path | None = None) -> str | None:
    """The project's commit (with ``-dirty`` when the tree has uncommitted changes), or None."""
    root = Path(root or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "") if sha else None


def provenance(data_path: str | None, parts: dict[str, Any] | None = None, fingerprint: str | None = None
               ) -> dict[str, Any]:
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return {"project_commit": git_commit(), "date_utc": now,
            "data_path": data_path, "data_sha256": data_digest(data_path),
            "checkpoint_sha256": (parts or {}).get("checkpoint_weights"),
            "checkpoint_config_sha256": (parts or {}).get("checkpoint"), "fingerprint": fingerprint}
