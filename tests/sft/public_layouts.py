"""Sample files in the public SFT layouts, written as their public descriptions say, and a file
with one bad row of each kind (shared by the layout, SFT and curation tests)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def png(color: str = "white", size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def fenced(code: str) -> str:
    return "<code>\n```python\n" + code + "\n```\n</code>"


# -- DeepEyesV2 SFT: LLaMA-Factory sharegpt JSON, role/content messages, relative image paths ----
def deepeyes_row(k: int, image: str) -> dict[str, Any]:
    a, b = 6 + k, 7
    return {"messages": [
        {"role": "system", "content": "You are DeepEyes."},
        {"role": "user", "content": f"<image>\nWhat is {a} times {b}?"},
        {"role": "assistant", "content": f"<think>Compute it.</think>\n{fenced(f'print({a} * {b})')}"},
        {"role": "user", "content": f"Code execution result:\n{a * b}"},
        {"role": "assistant", "content": f"<think>It printed {a * b}.</think>\n<answer>{a * b}</answer>"},
    ], "images": [image]}


# -- LLaMA-Factory sharegpt with tools: conversations from/value, function_call / observation ----
LLAMAFACTORY_ROW = {
    "conversations": [
        {"from": "human", "value": "<image>Who makes ACME signs?"},
        {"from": "function_call", "value": json.dumps({"name": "search", "arguments": {"query": "ACME signs"}})},
        {"from": "observation", "value": "1. ACME Corp makes signs."},
        {"from": "gpt", "value": "<think>The search says ACME Corp.</think><answer>ACME Corp</answer>"},
    ],
    "system": "You can search.", "tools": json.dumps([{"name": "search", "description": "web search"}]),
    "images": ["imgs/sign.png"],
}

# -- Thyme SFT: image list (base64), question, response with <code> / <sandbox_output> ----------
TRACEBACK = ('Traceback (most recent call last):\n  File "<code>", line 1, in <module>\n'
             "NameError: name 'x' is not defined")
THYME_RESPONSE = ("<think>Let me compute.\n" + fenced("print(x)") + f"<sandbox_output>{TRACEBACK}</sandbox_output>"
                  "\nx is undefined; define it.\n" + fenced('x = 3\nprint("<code>x</code>", x * 5)')
                  + "<sandbox_output><code>x</code> 15</sandbox_output>\nSo it is 15.</think><answer>15</answer>")


def thyme_row() -> dict[str, Any]:
    return {"image": [base64.b64encode(png("gray", (80, 80))).decode()], "question": "<image>\nWhat is 3 * 5?",
            "response": THYME_RESPONSE}


# -- ColdStart-like parquet: messages with typed parts, images as {bytes, path} -----------------
def coldstart_row() -> dict[str, Any]:
    return {"id": "cold-0", "data_source": "coldstart_like", "answer": "42", "messages": [
        {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "6 times 7?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>Multiply.</think>" + fenced("print(6 * 7)")}]},
        {"role": "user", "content": [{"type": "text", "text": "Code execution result:\n42"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<answer>42</answer>"}]},
    ], "images": [{"bytes": png("red"), "path": None}]}


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list[Any], raw_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


# -- one bad row of each kind, among good DeepEyesV2 rows ----------------------------------------
BAD_KINDS = {"unreadable_row": 2, "bad_content": 1, "missing_image": 1, "unbalanced_tags": 1,
             "tool_call_in_reasoning": 1, "no_final_answer": 1, "call_and_answer": 1, "bad_tool_call": 1}


def write_bad_rows_sample(folder: Path, n_good: int = 12) -> Path:
    """``sample.jsonl`` (+ ``imgs/``): ``n_good`` good rows, one row with ``messages`` stored as a
    JSON string (good: decoded), and the bad rows of :data:`BAD_KINDS`."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / "imgs" / "q.png").write_bytes(png("white"))
    good = [deepeyes_row(k, "imgs/q.png") for k in range(n_good)]
    as_string = {**deepeyes_row(99, "imgs/q.png")}
    as_string["messages"] = json.dumps(as_string["messages"])

    def edit(turn: int, content: Any) -> dict[str, Any]:
        row = deepeyes_row(50 + turn, "imgs/q.png")
        row["messages"] = [dict(m) for m in row["messages"]]
        row["messages"][turn]["content"] = content
        return row

    bad = [
        edit(3, 42),                                                             # bad_content: an integer content
        {**deepeyes_row(60, "imgs/q.png"), "images": ["imgs/not_there.png"]},    # missing_image
        edit(4, "<think>So.</think><answer>42"),                                  # unbalanced_tags: <answer> never closed
        edit(4, "<think>Check again <code>print(1)</think><answer>42</answer>"),  # tool_call_in_reasoning
        {**deepeyes_row(61, "imgs/q.png"), "messages": deepeyes_row(61, "")["messages"][:4]},  # no_final_answer
        edit(2, "<think>x</think>" + fenced("print(1)") + "<answer>1</answer>"),  # call_and_answer
        edit(2, '<tool_call>{"name": "python", "arguments": </tool_call>'),        # bad_tool_call: not JSON
    ]
    return write_jsonl(folder / "sample.jsonl", good + [as_string] + bad,
                       raw_lines=('{"messages": [{"role": "user", "content": "torn', '[1, 2, 3]'))
