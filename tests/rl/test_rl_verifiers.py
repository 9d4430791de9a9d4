"""Deterministic verifiers on tricky answers; none may raise."""

import threading

import pytest

from metis.rl import VERIFIERS, extract_choices, parse_number

exact, numeric, math_v, mc = (VERIFIERS.get(n) for n in ("exact", "numeric", "math", "multiple_choice"))


def test_registered():
    assert {"exact", "numeric", "math", "multiple_choice"} <= set(VERIFIERS.names())


@pytest.mark.parametrize("fn", [exact, numeric, math_v, mc])
@pytest.mark.parametrize("pred", [None, "", "   "])
def test_empty_predictions_score_zero(fn, pred):
    assert fn(pred, "A") == 0.0


@pytest.mark.parametrize("fn", [exact, numeric, math_v, mc])
def test_never_raises(fn):
    for pred, gt in [("}{\\frac", "\\sqrt{"), ("1/0", "1/0"), ("x", None), ("x", 3), ("x", []), ("(", ["(", None])]:
        assert fn(pred, gt) in (0.0, 1.0)


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("Paris.", "paris", 1.0),
        ("  The  Eiffel\nTower ", "the eiffel tower", 1.0),
        ('"yes"', "Yes!", 1.0),
        ("London", ["paris", "London"], 1.0),
        ("Paris", "Lyon", 0.0),
        ("the cat", "cat", 0.0),
    ],
)
def test_exact(pred, gt, expected):
    assert exact(pred, gt) == expected


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("1,234", "1234", 1.0),
        ("1,234,567.5", "1234567.5", 1.0),
        ("3.50", "3.5", 1.0),
        ("1/2", "0.5", 1.0),
        ("\\frac{1}{2}", "0.5", 1.0),
        ("$\\dfrac{3}{4}$", "0.75", 1.0),
        ("12 cm", "12", 1.0),
        ("12 cm^2", "12", 1.0),
        ("The answer is 12 cm.", "12 centimeters", 1.0),
        ("50%", "50", 1.0),
        ("0.50001", "0.5", 1.0),  # relative error 2e-5 <= 1e-4
        ("0.5001", "0.5", 0.0),  # relative error 2e-4
        ("2 or 3", "3", 0.0),  # two different numbers: ambiguous
        ("-4", "4", 0.0),
        ("abc", "1", 0.0),
        ("1/0", "1", 0.0),
        ("7", ["6", "7.0"], 1.0),
    ],
)
def test_numeric(pred, gt, expected):
    assert numeric(pred, gt) == expected


def test_parse_number():
    assert parse_number("1/2 = 0.5") == 0.5
    assert parse_number("x") is None


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("\\frac{1}{2}", "0.5", 1.0),
        ("0.5", "\\frac{1}{2}", 1.0),
        ("$\\sqrt{2}$", "\\sqrt{2}", 1.0),
        ("x = 2", "2", 1.0),
        ("\\boxed{12}", "12", 1.0),
        ("12 cm", "12", 1.0),
        ("3", "4", 0.0),
        ("}{", "1", 0.0),
    ],
)
def test_math(pred, gt, expected):
    assert math_v(pred, gt) == expected


def test_math_in_a_worker_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(math_v("\\frac{1}{2}", "0.5")))
    t.start()
    t.join(30)
    assert out == [1.0]


@pytest.mark.parametrize(
    "pred, gt, expected",
    [
        ("(B)", "B", 1.0),
        ("b", "B", 1.0),
        ("B.", "B", 1.0),
        ("The answer is b", "B", 1.0),
        ("The answer is b.", "(B)", 1.0),
        ("Answer: C", "C", 1.0),
        ("Looking at the chart, the correct option is (C) because it rises.", "C", 1.0),
        ("I compared (A) and (C); the answer is (C), not (A).", "C", 1.0),  # the answer phrase wins
        ("B. a cat", "(B) a cat", 1.0),
        ("D) 42", "D", 1.0),
        ("A or C", "A", 0.0),  # two different letters: ambiguous
        ("(A) (C)", "C", 0.0),
        ("The answer is a cat", "A", 0.0),  # the article is not an option letter
        ("Answer: D", "C", 0.0),
        ("A, C", "A, C", 1.0),  # multi-select ground truth
        ("A and C", "AC", 1.0),
        ("A", "A, C", 0.0),
        ("C", ["A", "C"], 1.0),  # a list is a set of alternatives
        ("a cat", "a cat", 1.0),  # no letters in the ground truth: exact match
    ],
)
def test_multiple_choice(pred, gt, expected):
    assert mc(pred, gt) == expected


def test_extract_choices():
    assert extract_choices("(B)") == {"B"}
    assert extract_choices("A, B and C") == {"A", "B", "C"}
    assert extract_choices("nothing here") == set()
