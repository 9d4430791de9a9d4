"""Reading benchmark files in the public formats they are distributed in.

- VLMEvalKit TSV: one row per sample, ``image`` holds base64 (or a list of base64 strings, or
  the ``index`` of another row whose image it shares), options in columns ``A``..``J``.
- Hugging Face layouts: parquet / JSON lines / JSON files, a ``datasets.save_to_disk`` folder,
  or a hub id read with ``datasets.load_dataset``; image cells hold PIL images, raw bytes,
  ``{"bytes": ..., "path": ...}`` dicts, base64 strings or file paths (relative to the file).

Rows come out as plain dicts. Nothing here knows about a particular benchmark.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger("metis.eval")

TABLE_SUFFIXES = (".tsv", ".csv", ".parquet", ".jsonl", ".json")


class BadRow(ValueError):
    """A row that cannot become a task (missing field, undecodable image); it is skipped."""


class EvalError(ValueError):
    """Input an evaluation cannot go on with (empty or unreadable file, no usable rows, missing
    data, a refused resume); the message is one line naming the file or config key."""


@dataclass
class RowSource:
    """Where rows came from: files are resolved relative to ``base_dir``."""

    rows: list[dict[str, Any]]
    base_dir: Path | None
    origin: str


# ----------------------------------------------------------------------------- tables
def is_missing(value: Any) -> bool:
    """None, NaN, empty string or pandas NA."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (list, tuple, dict, bytes)) else False
    except (TypeError, ValueError):
        return False


def _clean(value: Any) -> Any:
    """numpy scalars/arrays to Python, NaN to None."""
    if is_missing(value) and not isinstance(value, str):
        return None
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (bytes, str)):
        return value.item()
    return value


def _read_table(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise EvalError(f"{path}: empty file")
    if suffix in (".tsv", ".csv"):
        import pandas as pd

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                                    na_values=[], on_bad_lines="warn")
            except pd.errors.EmptyDataError:
                raise EvalError(f"{path}: empty file (no header, no rows)") from None
            except (pd.errors.ParserError, UnicodeDecodeError) as err:
                raise EvalError(f"{path}: not a readable {suffix[1:].upper()} ({str(err).strip()[:200]})") from None
        if frame.empty:
            raise EvalError(f"{path}: header only, no rows (columns: {', '.join(map(str, frame.columns[:12]))})")
        rows: list[dict[str, Any]] = [{k: (v if v != "" else None) for k, v in row.items()}
                                      for row in frame.to_dict("records")]
        for w in caught:  # malformed lines that pandas skipped: reported, not fatal
            if "Skipping line" in str(w.message) or "Expected" in str(w.message):
                rows.append({"__bad_row__": f"{path.name}: {str(w.message).strip()[:300]}"})
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as err:  # noqa: BLE001 - arrow raises several kinds on a broken file
            raise EvalError(f"{path}: not a readable parquet file ({type(err).__name__}: {err})") from None
        return [{k: _clean(v) for k, v in row.items()} for row in table.to_pylist()]
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    rows.append({"__bad_row__": f"{path.name}:{n}: invalid JSON ({err.msg})"})
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EvalError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from None
        if isinstance(data, dict):  # {"id": row} or {"data": [...]}
            data = data.get("data", data.get("rows", [dict(v, id=v.get("id", k)) if isinstance(v, dict) else v
                                                      for k, v in data.items()]))
        return list(data)
    raise ValueError(f"unsupported file {path} (expected one of {', '.join(TABLE_SUFFIXES)})")


def read_local(path: str | Path, split: str | None = None) -> RowSource:
    """Rows of a file, or of every table file in a folder (sorted; ``split`` filters file names),
    or of a ``datasets.save_to_disk`` folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"benchmark data not found at {path}")
    if path.is_file():
        rows = _read_table(path)
        if not rows:
            raise EvalError(f"{path}: no rows")
        return RowSource(rows, path.parent, str(path))
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split] if split in ds else ds[next(iter(ds))]
        return RowSource([dict(r) for r in ds], path, str(path))
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES and p.is_file()
                   and not p.name.startswith(".") and p.name not in ("dataset_info.json", "state.json"))
    if any(p.suffix.lower() != ".json" for p in files):
        # HF layouts keep per-image JSON sidecars next to the images; with real tables present,
        # .json files are metadata, not data tables
        files = [p for p in files if p.suffix.lower() != ".json"]
    if split:
        picked = [p for p in files if split.lower() in p.name.lower()]
        files = picked or files
    if not files:
        raise FileNotFoundError(f"no {'/'.join(TABLE_SUFFIXES)} files under {path}")
    rows: list[dict[str, Any]] = []
    for f in files:
        rows.extend(dict(r, __base_dir__=str(f.parent)) if isinstance(r, dict) else r for r in _read_table(f))
    if not rows:
        raise EvalError(f"{path}: no rows in {', '.join(f.name for f in files[:5])}")
    return RowSource(rows, path, str(path))


def download(url: str, cache_dir: str | Path) -> Path:
    """Fetch a benchmark file once (e.g. a VLMEvalKit TSV) into ``cache_dir``; reuse it after."""
    import httpx

    target = Path(cache_dir).expanduser() / url.rstrip("/").split("/")[-1].split("?")[0]
    if target.exists() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    log.info("downloading %s -> %s", url, target)
    with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as resp:
        resp.raise_for_status()
        with partial.open("wb") as fh:
            for chunk in resp.iter_bytes(1 << 20):
                fh.write(chunk)
    partial.replace(target)
    return target


def read_hub(hub_id: str, config: str | None = None, split: str | None = None) -> RowSource:
    """Rows of a hub dataset via ``datasets.load_dataset`` (needs network or a warm HF cache)."""
    import datasets

    ds = datasets.load_dataset(hub_id, config, split=split)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    return RowSource([dict(r) for r in ds], None, f"hf://{hub_id}" + (f"/{config}" if config else "") +
                     (f"[{split}]" if split else ""))


# ----------------------------------------------------------------------------- images
def _open(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds
        raise BadRow(f"undecodable image ({type(err).__name__}: {err})") from None
    return img.convert("RGB")


def _b64(text: str) -> bytes | None:
    s = text.strip()
    if s.startswith("data:") and "," in s:
        s = s.split(",", 1)[1]
    if len(s) < 32:
        return None
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.b64decode(s + "=" * (-len(s) % 4))
        except (binascii.Error, ValueError):
            return None


def decode_images(value: Any, base_dir: str | Path | None = None,
                  shared: dict[str, Any] | None = None) -> list[Image.Image]:
    """Every image in a cell: PIL, bytes, {"bytes", "path"}, base64, a path, a list of those,
    a string holding a Python/JSON list of those, or (VLMEvalKit) another row's index."""
    if value is None:
        return []
    if isinstance(value, Image.Image):
        return [value.convert("RGB")]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return [_open(bytes(value))]
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return decode_images(value["bytes"], base_dir, shared)
        if value.get("path"):
            return decode_images(str(value["path"]), base_dir, shared)
        raise BadRow("image dict without bytes or path")
    if isinstance(value, (list, tuple)):
        return [im for v in value for im in decode_images(v, base_dir, shared)]
    if isinstance(value, str):
        s = value.strip()
        if not s:
            return []
        if s.startswith("[") and s.endswith("]"):
            try:
                return decode_images(json.loads(s), base_dir, shared)
            except json.JSONDecodeError:
                try:
                    return decode_images(ast.literal_eval(s), base_dir, shared)
                except (ValueError, SyntaxError):
                    pass
        if shared is not None and len(s) <= 64 and s in shared:  # VLMEvalKit: "image" = index of a row
            return decode_images(shared[s], base_dir, None)
        for candidate in ([Path(s)] if Path(s).is_absolute() else
                          [Path(base_dir) / s] if base_dir is not None else []) + [Path(s)]:
            try:
                if candidate.is_file():
                    return [_open(candidate.read_bytes())]
            except OSError:
                continue
        data = _b64(s)
        if data is not None:
            return [_open(data)]
        raise BadRow(f"image {s[:60]!r} is neither base64 nor an existing file")
    raise BadRow(f"unsupported image cell of type {type(value).__name__}")


def encode_image_b64(img: Image.Image, fmt: str = "PNG") -> str:
    """Base64 of an image (VLMEvalKit TSV convention); used to write test files and reports."""
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def open_source(name: str, path: str | None = None, url: str | None = None, hub_id: str | None = None,
                hub_config: str | None = None, split: str | None = None, cache_dir: str | None = None) -> RowSource:
    """The rows: ``path`` when it exists, else ``url`` (downloaded once), else ``hub_id``."""
    if path and Path(path).expanduser().exists():
        return read_local(path, split)
    if url:
        try:
            local = download(url, Path(cache_dir or "~/.cache/metis") / "eval")
        except Exception as err:
            raise FileNotFoundError(f"benchmark {name}: no data at benchmark.path={path!r} and downloading {url} "
                                    f"failed ({type(err).__name__}: {err}); download it yourself and set "
                                    "benchmark.path") from err
        return read_local(local, split)
    if hub_id:
        try:
            return read_hub(hub_id, hub_config, split)
        except Exception as err:  # noqa: BLE001 - datasets/hub raise many kinds (offline, gated, unknown id)
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise FileNotFoundError(f"benchmark {name}: no data at benchmark.path={path!r}, and loading hub dataset "
                                    f"{hub_id!r} failed ({type(err).__name__}: {first}); download it and set "
                                    "benchmark.path") from None
    raise FileNotFoundError(f"benchmark {name}: no data at benchmark.path={path!r} and no benchmark.url/hub_id; "
                            f"point benchmark.path at the file or folder (see docs/evaluation.md)")
