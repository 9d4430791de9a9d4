"""Prediction files for score-only runs (``python -m metis.evaluate mode=score predictions=<file>``).

:func:`read_prediction_file` returns records in this project's form (``id``, ``final_answer``,
``response``, the original ``row``) from:

- this project's ``predictions.jsonl`` (:mod:`metis.eval.runner`): ``final_answer`` is the
  ``<answer>`` content the agent loop extracted;
- a VLMEvalKit prediction file (``<model>_<dataset>.xlsx`` / ``.tsv`` / ``.csv``): one row per
  sample with ``index`` and the raw ``prediction`` (the whole reply is the answer; the rules
  extract letters or values from it), plus the dataset's own columns;
- an lmms-eval sample log (``samples_<task>.jsonl`` written with ``--log_samples``): ``doc_id``,
  ``doc`` (the dataset row, images removed), ``target`` and ``filtered_resps`` / ``resps``.

Errors name the file and the problem in one line (:class:`metis.eval.formats.EvalError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metis.eval.formats import EvalError, is_missing
from metis.eval.runner import read_predictions
from metis.io.jsonl import iter_jsonl

ID_COLUMNS = ("index", "id", "pid", "sample_index", "question_id", "ID", "Question_id")


def _row_id(row: dict[str, Any]) -> str | None:
    for key in ID_COLUMNS:
        if key in row and not is_missing(row[key]):
            value = row[key]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if key == "ID" and not is_missing(row.get("key")) and "index" not in row:
                return f"{value}_{row['key']}"  # WeMath (HF): ID is shared by a problem's steps
            return str(value).strip()
    return None


def _text(value: Any) -> str | None:
    while isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    return None if is_missing(value) else str(value)


def _read_vlmevalkit(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    try:
        if path.suffix.lower() == ".xlsx":
            frame = pd.read_excel(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str,
                                keep_default_na=False)
    except ImportError as err:
        raise EvalError(f"{path}: reading .xlsx needs openpyxl ({err})") from None
    except pd.errors.EmptyDataError:
        raise EvalError(f"{path}: empty file") from None
    except Exception as err:  # noqa: BLE001 - pandas/openpyxl raise many kinds on a broken file
        raise EvalError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    if frame.empty:
        raise EvalError(f"{path}: no rows (header only?)")
    if "prediction" not in frame.columns:
        raise EvalError(f"{path}: no 'prediction' column (columns: {', '.join(map(str, frame.columns[:12]))})")
    out = []
    for n, row in enumerate(frame.to_dict("records")):
        row = {k: (None if v == "" else v) for k, v in row.items()}
        row.pop("image", None)  # base64 images are not needed for scoring
        rid = _row_id(row)
        if rid is None:
            raise EvalError(f"{path}: row {n} has no index/id column")
        out.append({"id": rid, "final_answer": _text(row.get("prediction")), "response": _text(row.get("prediction")),
                    "row": row, "error": None})
    return out


def _read_lmms_eval(path: Path, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for rec in lines:
        doc = rec.get("doc") if isinstance(rec.get("doc"), dict) else {}
        rid = _row_id(doc) if doc else None
        if rid is None:
            rid = str(rec.get("doc_id"))
        answer = _text(rec.get("filtered_resps")) or _text(rec.get("resps"))
        row = dict(doc)
        if "target" in rec and not any(k in row for k in ("answer", "label", "Answer")):
            row["answer"] = rec["target"]
        out.append({"id": rid, "final_answer": answer, "response": answer, "row": row, "error": None})
    return out


def read_prediction_file(path: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """(format name, records) of a prediction file; format is ``metis``, ``vlmevalkit`` or ``lmms-eval``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise EvalError(f"predictions={path}: no such file")
    if path.stat().st_size == 0:
        raise EvalError(f"{path}: empty file")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".tsv", ".csv"):
        return "vlmevalkit", _read_vlmevalkit(path)
    if suffix not in (".jsonl", ".json"):
        raise EvalError(f"{path}: unsupported prediction file (expected .jsonl, .xlsx, .tsv or .csv)")
    lines = [rec for _, rec in iter_jsonl(path)]
    first = lines[0] if lines else None
    if first is None:
        raise EvalError(f"{path}: no JSON records")
    if "doc_id" in first and ("resps" in first or "filtered_resps" in first):
        return "lmms-eval", _read_lmms_eval(path, lines)
    if "id" in first and "final_answer" in first:
        records = list(read_predictions(path).values())
        return "metis", [dict(r, row=None) for r in records]
    raise EvalError(f"{path}: neither this project's predictions.jsonl (id, final_answer) nor an lmms-eval "
                    "sample log (doc_id, resps)")
