"""Writes a small RL prompt parquet in the verl layout (Metis-RL columns and nesting) for tests."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SYSTEM = "You are a helpful assistant."
SCHEMA = pa.schema([
    ("data_source", pa.string()),
    ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
    ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
    ("extra_info", pa.struct([("answer", pa.string()), ("index", pa.int64()), ("pass8", pa.float64()),
                              ("question", pa.string()), ("split", pa.string())])),
])


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def row(index: int, source: str, ability: str, question: str, truth: str, images: list[bytes],
        placeholders: int | None = None) -> dict:
    n = len(images) if placeholders is None else placeholders
    user = "<image>" * n + question
    return {"data_source": source,
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
            "images": [{"bytes": b, "path": None} for b in images],
            "ability": ability,
            "reward_model": {"ground_truth": truth, "style": "rule"},
            "extra_info": {"answer": truth, "index": index, "pass8": 0.5, "question": question, "split": "train"}}


def rl_rows() -> list[dict]:
    """12 good rows over 3 sources (math, multiple choice, free form), 1 corrupt image, 1 mismatch."""
    rows = []
    for k in range(4):
        rows.append(row(k, "geo_math", "math", f"What is {k} + 1/2? Put the answer in LaTeX.",
                        f"$\\frac{{{2 * k + 1}}}{{2}}$", [png((10 * k, 0, 0))]))
    for k in range(4):
        rows.append(row(10 + k, "chart_mc", "multiple_choice",
                        "Which options are red? A. left B. right C. top D. none", "A, C" if k % 2 else "B",
                        [png((200, 0, 0)), png((0, 0, 200))]))
    for k in range(4):
        rows.append(row(20 + k, "fvqa_search", "search", f"Which city hosts landmark {k}?", f"City {k}",
                        [png((0, 100, 0))]))
    rows.append(row(30, "geo_math", "math", "Broken image: what is 2+2?", "4", [b"\x89PNG\r\n\x1a\nnot really"]))
    rows.append(row(31, "chart_mc", "multiple_choice", "Mismatch: two placeholders, one image.", "A",
                    [png((1, 2, 3))], placeholders=2))
    return rows


def write_rl_parquet(path: str | Path, rows: list[dict] | None = None, row_group_size: int = 4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows if rows is not None else rl_rows(), schema=SCHEMA)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path
