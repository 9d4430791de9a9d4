"""The predictions file: torn lines, error records, and a model that cannot load."""

from __future__ import annotations

import json

import pytest
from bench_files import image

from metis.core.task import Task
from metis.eval.runner import EvalRunner, read_predictions


def test_read_predictions_tolerates_torn_lines_and_keeps_good_records(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"id": "a", "final_answer": "A", "error": None}, {"id": "b", "error": "RuntimeError: x"},
             {"id": "a", "error": "RuntimeError: later"}, {"id": "b", "final_answer": "B", "error": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"id": "c", "final_ans')
    recs = read_predictions(path)
    assert recs["a"]["final_answer"] == "A" and recs["b"]["final_answer"] == "B" and "c" not in recs


def test_a_model_that_cannot_load_ends_the_run(tmp_path):
    def broken_factory():
        raise OSError("no weights at /nowhere")

    runner = EvalRunner(broken_factory, tmp_path / "p.jsonl", "vstar")
    task = Task(id="0", question="q", images=[image()], answer="A", verifier="multiple_choice")
    with pytest.raises(OSError, match="no weights"):
        runner.run([task])
    assert read_predictions(tmp_path / "p.jsonl") == {}
    with pytest.raises(ValueError):
        EvalRunner(broken_factory, tmp_path / "p.jsonl", "vstar", batch_size=0)
