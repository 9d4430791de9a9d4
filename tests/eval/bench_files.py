"""Small benchmark files in each public format (VLMEvalKit TSV with base64 images, HF parquet
with image bytes, JSON lines with relative image paths), plus a scripted engine and a fake
toolbox for driving the evaluation without a real model. Imported by the tests of this folder."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from metis.eval.formats import encode_image_b64


def image(color: str = "white", size: int = 56) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def png_bytes(color: str = "white") -> bytes:
    buf = io.BytesIO()
    image(color).save(buf, format="PNG")
    return buf.getvalue()


def write_tsv(path: Path, rows: list[dict[str, Any]]) -> Path:
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def mcq_tsv_rows(n: int, extra=None) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        row = {"index": i, "image": encode_image_b64(image(["red", "green", "blue", "white"][i % 4])),
               "question": f"What color is the square {i}?", "A": "red", "B": "green", "C": "blue", "D": "white",
               "answer": "ABCD"[i % 4], "category": "direct_attributes"}
        row.update((extra or {}).get(i, {}))
        rows.append(row)
    return rows


def make_all(root: Path) -> dict[str, str]:
    """One small file (or folder) per benchmark; returns benchmark name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["vstar"] = write_tsv(root / "VStarBench.tsv", mcq_tsv_rows(3))
    hr = mcq_tsv_rows(4, {i: {"category": ["single", "cross"][i % 2], "cycle_category": f"cycle{i // 2}"}
                          for i in range(4)})
    hr[3]["image"] = "1"  # VLMEvalKit: the image of the row with index 1
    paths["hrbench_4k"] = write_tsv(root / "HRBench4K.tsv", hr)
    hr8 = mcq_tsv_rows(3, {i: {"category": "single", "cycle_category": "c0"} for i in range(3)})
    hr8[1]["image"] = "bm90IGFuIGltYWdlIGF0IGFsbCBqdXN0IHRleHQgdGV4dCB0ZXh0IHRleHQ="  # corrupt: base64 of text
    paths["hrbench_8k"] = write_tsv(root / "HRBench8K.tsv", hr8)
    with paths["hrbench_8k"].open("a") as fh:  # a malformed line (too many fields)
        fh.write("99\tx\ty\tz\tw\tv\tu\tt\ts\tr\tq\tp\n")
    paths["treebench"] = write_parquet(root / "TreeBench" / "test.parquet", [
        {"id": i, "image": {"bytes": png_bytes("red"), "path": None}, "question": "Which object is left?",
         "options": ["cup", "bowl", "plate"], "answer": "AB"[i % 2], "category": "localization"} for i in range(2)])
    paths["mme_realworld"] = write_tsv(root / "MME-RealWorld.tsv", mcq_tsv_rows(2, {
        i: {"E": "none", "category": "Perception", "l2-category": "OCR"} for i in range(2)}))
    paths["seed_bench_2_plus"] = write_tsv(root / "SEEDBench2_Plus.tsv", mcq_tsv_rows(2, {
        i: {"category": "chart"} for i in range(2)}))
    charxiv = [{"figure_id": i, "image": {"bytes": png_bytes("white"), "path": f"images/{i}.jpg"},
                "category": "cs", "num_subplots": 1 + i, "subplot_row": 1, "subplot_col": 2,
                "descriptive_q1": 7, "descriptive_a1": "60", "descriptive_q2": 11, "descriptive_a2": "Yes",
                "descriptive_q3": None, "descriptive_a3": None, "descriptive_q4": 19, "descriptive_a4": str(1 + i),
                "reasoning_q": "Which model declines more?", "reasoning_a": "Joint-CNN", "reasoning_a_type": 1,
                "reasoning_q_source": 1} for i in range(2)]
    paths["charxiv_dq"] = paths["charxiv_rq"] = write_parquet(root / "CharXiv" / "validation.parquet", charxiv)
    paths["mathvista"] = write_parquet(root / "MathVista" / "testmini.parquet", [
        {"pid": "1", "question": "What is the value of x?", "image": "images/1.jpg",
         "decoded_image": {"bytes": png_bytes("white"), "path": None}, "choices": None, "unit": None,
         "precision": None, "answer": "12", "question_type": "free_form", "answer_type": "integer",
         "metadata": {"task": "geometry problem solving", "category": "math-targeted-vqa", "skills": ["algebraic"]}},
        {"pid": "2", "question": "Which is larger?", "image": "images/2.jpg",
         "decoded_image": {"bytes": png_bytes("blue"), "path": None}, "choices": ["the cat", "the dog"], "unit": None,
         "precision": None, "answer": "the dog", "question_type": "multi_choice", "answer_type": "text",
         "metadata": {"task": "figure question answering", "category": "general-vqa", "skills": ["logical"]}}])
    mv = root / "MathVerse"
    (mv / "images").mkdir(parents=True, exist_ok=True)
    image("green").save(mv / "images" / "g.png")
    with (mv / "testmini.jsonl").open("w") as fh:
        fh.write(json.dumps({"sample_index": "1", "problem_version": "Text Lite", "image": "images/g.png",
                             "question": "Find the area. Choices: A:12 B:24", "answer": "B",
                             "question_type": "multi-choice",
                             "query_wo": "Please answer with the option letter.\nQuestion: Find the area. "
                                         "Choices: A:12 B:24"}) + "\n")
        fh.write(json.dumps({"sample_index": "2", "problem_version": "Vision Only", "image": "images/g.png",
                             "question": "", "answer": "\\frac{1}{2}", "question_type": "free-form",
                             "query_wo": "According to the question shown in the image, answer."}) + "\n")
        fh.write("{not json\n")  # a corrupt line: reported and skipped
    paths["mathverse"] = mv
    paths["wemath"] = write_parquet(root / "WeMath" / "testmini.parquet", [
        {"ID": "7", "key": key, "question": f"Step {key}?", "option": "A. 1; B. 2; C. 3",
         "answer": ans, "image_path": {"bytes": png_bytes("white"), "path": None}, "knowledge concept": "area",
         "question number": n} for n, (key, ans) in enumerate([("2steps_1", "A"), ("2steps_2", "B"),
                                                                ("2steps_multi", "C")])])
    paths["dynamath"] = write_tsv(root / "DynaMath.tsv", [
        {"index": f"{q}_{v}", "image": encode_image_b64(image()), "question": "Compute the slope.",
         "answer": ["0.5", "A", "increasing"][v % 3], "answer_type": ["float", "multiple choice", "text"][v % 3],
         "A": "up", "B": "down", "qid": q, "varid": v, "subject": "algebra", "knowledge_level": "high school"}
        for q in range(2) for v in range(2)])
    paths["logicvista"] = write_tsv(root / "LogicVista.tsv", mcq_tsv_rows(2, {
        0: {"answer": "A, C", "skill": "inductive"}, 1: {"skill": "deductive"}}))
    return {k: str(v) for k, v in paths.items()}


# ----------------------------------------------------------------------------- fakes
class FakeObservation:
    def __init__(self, text, images=(), error=None):
        self.text, self.images, self.error = text, list(images), error


class FakeToolBox:
    """A ``python`` tool answering "42"; anything else is an unknown tool."""

    def __init__(self, tools=("python",)):
        self.tools, self.calls, self.closed = list(tools), [], False

    def specs(self):
        return [{"name": t, "description": "run code", "parameters": {"code": "str"}} for t in self.tools]

    def start(self, traj_id, images, meta=None):
        pass

    def end(self, traj_id):
        pass

    def execute(self, traj_id, name, arguments):
        self.calls.append((traj_id, name))
        if name not in self.tools:
            return FakeObservation(f"unknown tool {name}", error="unknown_tool")
        return FakeObservation("Code execution result:\n42")

    def metrics(self):
        return {t: {"calls": sum(n == t for _, n in self.calls)} for t in self.tools}

    def close(self):
        self.closed = True


class ScriptedEngine:
    """Answers by task id: ``script(task) -> list of turn texts``; counts calls per task id."""

    def __init__(self, processor, script):
        self.tok, self.script = processor.tokenizer, script
        self.turn: dict[str, int] = {}
        self.calls_per_task: dict[str, int] = {}

    def bind(self, model, processor):
        pass

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        out = []
        for t in trajs:
            self.calls_per_task[t.task.id] = self.calls_per_task.get(t.task.id, 0) + 1
            turn = self.turn.get(t.traj_id, 0)
            self.turn[t.traj_id] = turn + 1
            turns = self.script(t.task)
            text = turns[min(turn, len(turns) - 1)]
            out.append(self.tok(text, add_special_tokens=False)["input_ids"])
        return out
