"""Benchmark answer rules where the official scoring differs from the generic one.

``ANSWER_RULES[name](prediction, ground_truth, verifier, options, question, judge, grading, meta=...)``
returns a :class:`metis.eval.scoring.Verdict`; a benchmark picks one with
``benchmark.answer_rule``. Each falls back to :func:`metis.eval.scoring.score_prediction` where
its own rule does not apply, so the judge and ``unscored`` policy are the same everywhere.

- ``dynamath``: the official prompt asks for JSON with a "short answer" key; it is read from the
  prediction when present. Floats are right within an absolute 0.001 (pi written as "π"
  multiplies), multiple choice needs the one letter, text answers are right when the short
  answer is contained in the ground truth (case-insensitive), as DynaMath's script does.
- ``mathvista``: free-form answers are normalised by ``answer_type`` before comparison: integers
  truncated to int, floats rounded to the row's ``precision`` decimals, lists compared without
  spaces (MathVista's own normalisation). Multiple choice as usual (the ground-truth letter
  comes from ``answer_option`` / the choices, see the loader).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from metis.eval.scoring import Verdict, extract_option_letters, score_prediction, truth_letters
from metis.rl.verifiers import normalize_text, parse_number
from metis.utils.registry import Registry

ANSWER_RULES: Registry = Registry("answer rule")


def _verdict(ok: bool, extracted: str) -> Verdict:
    return Verdict(float(ok), "correct" if ok else "wrong", "rule", extracted)


def short_answer(prediction: str) -> str | None:
    """The "short answer" of a DynaMath JSON reply (the outermost {...} of the text), or None."""
    text = str(prediction)
    start, end = text.find("{"), text.rfind("}")
    if not 0 <= start < end:
        return None
    blob = text[start:end + 1]
    for candidate in (blob, blob.replace("\\", "")):
        try:
            data = json.loads(candidate, strict=False)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and data.get("short answer") is not None:
            return str(data["short answer"]).strip()
    return None


def _float_with_pi(text: str) -> float | None:
    s = str(text).strip()
    if "\u03c0" in s:
        head = s.split("\u03c0")[0].strip()
        base = parse_number(head) if head else 1.0
        return None if base is None else base * math.pi
    return parse_number(s.split(" ")[0]) if s else None


@ANSWER_RULES.register("dynamath")
def dynamath_rule(prediction: Any, ground_truth: Any, verifier: str, options: dict[str, str] | None = None,
                  question: str = "", judge=None, grading: str | None = None,
                  meta: dict[str, Any] | None = None) -> Verdict:
    atype = str((meta or {}).get("answer_type", "")).lower()
    if prediction is None or not str(prediction).strip():
        return score_prediction(prediction, ground_truth, verifier, options, question, judge, grading)
    short = short_answer(str(prediction))
    answer = short if short is not None else str(prediction).strip()
    if "float" in atype:
        got, want = _float_with_pi(answer), _float_with_pi(str(ground_truth))
        if got is not None and want is not None:
            return _verdict(abs(got - want) <= 1e-3, str(got))
    elif "choice" in atype and short is not None:
        letters = extract_option_letters(short, options)
        if letters:
            return _verdict(letters == truth_letters(str(ground_truth), options), ",".join(sorted(letters)))
    elif short is not None and short and "choice" not in atype:
        if normalize_text(short) and normalize_text(short) in normalize_text(str(ground_truth)):
            return _verdict(True, short)
    return score_prediction(answer, ground_truth, verifier, options, question, judge, grading)


def _normalise_mathvista(value: str, atype: str, precision: Any) -> str | None:
    number = parse_number(value)
    if atype == "integer":
        return None if number is None else str(int(number))
    if atype == "float":
        try:
            digits = int(float(precision)) if precision is not None and str(precision).strip() else None
        except ValueError:
            digits = None
        if number is None:
            return None
        return str(round(number, digits)) if digits is not None else str(number)
    if atype == "list":
        return re.sub(r"\s+", "", str(value))
    return None


@ANSWER_RULES.register("mathvista")
def mathvista_rule(prediction: Any, ground_truth: Any, verifier: str, options: dict[str, str] | None = None,
                   question: str = "", judge=None, grading: str | None = None,
                  meta: dict[str, Any] | None = None) -> Verdict:
    meta = meta or {}
    atype = str(meta.get("answer_type", "")).lower()
    if verifier != "multiple_choice" and prediction is not None and str(prediction).strip() and atype in (
            "integer", "float", "list"):
        got = _normalise_mathvista(str(prediction), atype, meta.get("precision"))
        want = _normalise_mathvista(str(ground_truth), atype, meta.get("precision"))
        if got is not None and want is not None:
            if atype == "float":
                return _verdict(float(got) == float(want), got)
            return _verdict(got == want, got)
    return score_prediction(prediction, ground_truth, verifier, options, question, judge, grading)
