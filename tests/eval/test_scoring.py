"""Scoring pinned on tricky answers, the judge policy, and the per-benchmark aggregates."""

from __future__ import annotations

import math

import pytest

from metis.eval.metrics import aggregate, tool_metrics
from metis.eval.scoring import extract_option_letters, score_prediction, score_records
from metis.io.judge import JudgeUnavailable

OPTS = {"A": "red", "B": "dark green", "C": "blue", "D": "green"}


@pytest.mark.parametrize("prediction, letters", [
    ("B", {"B"}),
    ("(B)", {"B"}),
    ("b", {"B"}),
    ("(b).", {"B"}),
    ("B. dark green", {"B"}),
    ("The answer is C.", {"C"}),
    ("answer: (c)", {"C"}),
    ("After zooming in, I would pick C because the shirt is clearly blue", {"C"}),  # letter inside prose
    ("A dog sits next to the C-shaped object, so C", {"C"}),  # "A" read as a word in a sentence
    ("A, C", {"A", "C"}),
    ("A and C", {"A", "C"}),
    ("A or B", {"A", "B"}),  # hedging keeps both letters: wrong unless the truth is that set
    ("blue", {"C"}),  # the option text
    ("It is blue.", {"C"}),
    ("green", {"D"}),  # exact option text beats the longer "dark green"
    ("E", set()),  # not an option
    ("I cannot tell from the image", set()),  # no letter, no option text: unanswered, never a guess
])
def test_option_extraction(prediction, letters):
    assert extract_option_letters(prediction, OPTS) == letters


@pytest.mark.parametrize("prediction, truth, status", [
    ("(B)", "B", "correct"),
    ("b", "B", "correct"),
    ("The answer is B", "B", "correct"),
    ("A or B", "B", "wrong"),
    ("A, C", "A, C", "correct"),  # multi-select ground truth (LogicVista)
    ("C, A", "AC", "correct"),
    ("A", "A, C", "wrong"),
    ("dark green", "B", "correct"),
    ("dark green", "dark green", "correct"),  # ground truth given as the option text
    ("no idea", "B", "unanswered"),
    ("", "B", "unanswered"),
    (None, "B", "unanswered"),
])
def test_multiple_choice_verdicts(prediction, truth, status):
    v = score_prediction(prediction, truth, "multiple_choice", OPTS)
    assert v.status == status and v.score == (1.0 if status == "correct" else 0.0)
    if status == "unanswered":
        assert v.method == "none"


@pytest.mark.parametrize("prediction, truth, verifier, ok", [
    ("12 cm", "12", "numeric", True),  # numbers with units
    ("12 cm^2", "12", "math", True),
    ("50%", "50", "numeric", True),
    ("0.5", "1/2", "math", True),  # fractions vs decimals
    ("\\frac{1}{2}", "0.5", "math", True),  # LaTeX
    ("$\\frac{3}{4}$", "0.75", "numeric", True),
    ("\\sqrt{2}", "\\sqrt{2}", "math", True),
    ("x = 3", "3", "math", True),
    ("1,234", "1234", "numeric", True),
    ("0.33", "1/3", "math", False),
    ("13", "12", "numeric", False),
    ("Joint-CNN", "joint-cnn", "exact", True),
    ("Yes.", "yes", "exact", True),
])
def test_free_form_verdicts(prediction, truth, verifier, ok):
    v = score_prediction(prediction, truth, verifier)
    assert (v.status == "correct") is ok and v.method == "rule"


class FakeJudge:
    def __init__(self, verdict=1.0, fail=False):
        self.verdict, self.fail, self.calls = verdict, fail, []

    def judge(self, question, ground_truth, prediction):
        self.calls.append((question, ground_truth, prediction))
        if self.fail:
            raise JudgeUnavailable("down")
        return self.verdict


def test_judge_only_where_rules_cannot_decide():
    judge = FakeJudge(1.0)
    # decided by rules: no judge call
    assert score_prediction("B", "B", "multiple_choice", OPTS, judge=judge).method == "rule"
    assert score_prediction("13", "12", "numeric", judge=judge).status == "wrong"
    assert score_prediction("12", "12", "math", judge=judge).status == "correct"
    assert judge.calls == []
    # undecidable by rules: the judge decides and is recorded
    v = score_prediction("the one on the left", "B", "multiple_choice", OPTS, question="q?", judge=judge)
    assert (v.status, v.method) == ("correct", "judge")
    v = score_prediction("the Joint CNN model", "Joint-CNN", "exact", question="q?", judge=judge)
    assert (v.status, v.method) == ("correct", "judge")
    v = score_prediction("about a half", "0.5", "math", judge=FakeJudge(0.0))
    assert (v.status, v.method) == ("wrong", "judge")
    assert len(judge.calls) == 2
    # no answer at all: never sent to the judge
    assert score_prediction(None, "B", "multiple_choice", OPTS, judge=judge).status == "unanswered"
    assert len(judge.calls) == 2


def test_judge_failure_is_unscored_never_wrong():
    v = score_prediction("no idea", "B", "multiple_choice", OPTS, judge=FakeJudge(fail=True))
    assert (v.status, v.score, v.note) == ("unscored", None, "judge_unavailable")
    v = score_prediction("the Joint CNN", "Joint-CNN", "exact", judge=FakeJudge(fail=True))
    assert (v.status, v.score, v.method) == ("unscored", None, "judge")
    # rows the rules decide are scored even with the judge down
    assert score_prediction("B", "B", "multiple_choice", OPTS, judge=FakeJudge(fail=True)).status == "correct"


def _rec(i, answer, pred, calls=(), errors=0, turns=1, truncated=False, meta=None, error=None):
    return {"id": str(i), "answer": answer, "final_answer": pred, "verifier": "multiple_choice",
            "meta": {"options": OPTS, **(meta or {})}, "num_tool_calls": len(calls), "tool_calls": list(calls),
            "tool_errors": errors, "num_turns": turns, "truncated": truncated, "error": error}


def test_aggregate_tool_use_and_failures():
    recs = [_rec(0, "A", "A", calls=["python", "python"], turns=3),
            _rec(1, "B", "B"),
            _rec(2, "C", "A", calls=["calculator"], errors=1, turns=2),
            _rec(3, "D", None, turns=4, truncated=True),
            _rec(4, "A", None, error="RuntimeError: boom")]
    m = aggregate(score_records(recs))
    assert m["n"] == 5 and m["accuracy"] == pytest.approx(2 / 5)
    assert m["unanswered"] == 2  # no answer + runtime failure
    assert m["runtime_errors"] == 1 and m["truncated"] == 1
    # tool use over the 4 samples that ran
    assert m["tool_use_rate"] == pytest.approx(2 / 4)
    assert m["mean_tool_calls"] == pytest.approx(3 / 4)
    assert m["tool_calls/python"] == 2 and m["tool_calls/calculator"] == 1
    assert m["tool_use_rate/python"] == pytest.approx(1 / 4)
    assert m["tool_errors"] == 1 and m["tool_error_rate"] == pytest.approx(1 / 3)
    assert m["mean_turns"] == pytest.approx(10 / 4)
    assert m["accuracy_with_tools"] == pytest.approx(1 / 2) and m["accuracy_without_tools"] == pytest.approx(1 / 2)
    assert tool_metrics([])["tool_calls"] == 0


def test_benchmark_specific_metrics():
    hr = [_rec(0, "A", "A", meta={"category": "single", "cycle_category": "c0"}),
          _rec(1, "A", "B", meta={"category": "cross", "cycle_category": "c0"}),
          _rec(2, "A", "A", meta={"category": "single", "cycle_category": "c1"}),
          _rec(3, "A", "A", meta={"category": "single", "cycle_category": "c1"}),
          _rec(4, "A", "A", meta={"category": "cross", "cycle_category": "c1"})]
    m = aggregate(score_records(hr), group_by=["category"], extra_metrics=["hrbench"])
    assert m["accuracy/category=single"] == 1.0 and m["accuracy/category=cross"] == 0.5
    assert m["hrbench/all"] == pytest.approx((0.5 + 1.0) / 2)  # mean over cycles, not over samples
    assert m["hrbench/cross"] == pytest.approx((0.0 + 1.0) / 2)
    dyn = [_rec(i, "A", "A" if i != 1 else "B", meta={"qid": str(i // 2)}) for i in range(4)]
    m = aggregate(score_records(dyn), extra_metrics=["dynamath"])
    assert m["dynamath/average_case"] == 0.75 and m["dynamath/worst_case"] == 0.5
    we = [_rec(f"1{k}", "A", p, meta={"ID": "1", "key": f"2steps_{k}"}) for k, p in (("1", "A"), ("2", "A"), ("multi", "B"))]
    we += [_rec(f"2{k}", "A", p, meta={"ID": "2", "key": f"2steps_{k}"}) for k, p in (("1", "B"), ("2", "A"), ("multi", "A"))]
    m = aggregate(score_records(we), extra_metrics=["wemath"])
    # problem 1: both steps right, composite wrong (IG); problem 2: a step wrong, composite right
    # (RM strict, but CM loose since one step is right)
    assert (m["wemath/IG"], m["wemath/IK"], m["wemath/composites"]) == (0.5, 0.0, 2)
    assert (m["wemath/CM_strict"], m["wemath/RM_strict"]) == (0.0, 1.0)
    assert (m["wemath/CM_loose"], m["wemath/RM_loose"]) == (0.5, 0.0)
    assert m["wemath/score_strict"] == pytest.approx((2 - 0.5 - 1) / 2)
    assert m["wemath/score_loose"] == pytest.approx((2 - 0.5) / 2)
    assert math.isnan(aggregate([])["accuracy"])
