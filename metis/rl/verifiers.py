"""Deterministic answer verifiers: fn(prediction, ground_truth) -> float in [0, 1].

Every verifier returns 0.0 for a None/empty prediction, takes the max over a list of ground
truths, and never raises (any internal error scores 0.0).

Deliberate simplifications:
- "exact" normalisation: lower-case, whitespace collapsed, surrounding quotes/backticks/`$` and
  trailing `.,;:!?` removed; nothing else (no article removal, no synonyms);
- "numeric": one number per answer; thousands separators `1,234`, fractions `1/2`,
  `\\frac{1}{2}`, a trailing unit or `%` are accepted ("50%" is 50, not 0.5); an answer with
  several different numbers is unparseable (0); tolerance rel 1e-4 (abs 1e-9 around 0);
- "math": math_verify (with its signal-based timeouts only in the main thread; without
  timeouts elsewhere), then the numeric verifier as a fallback (the max of both);
- "multiple_choice": option letters A-J; a ground-truth string naming several letters
  ("A, C") is a multi-select answer that the prediction's set must equal; a list of ground
  truths is a list of alternatives (max over them).
"""

from __future__ import annotations

import functools
import math
import re
import threading
from typing import Callable

from metis.utils.registry import Registry

VerifierFn = Callable[[str | None, str | list[str]], float]
VERIFIERS: Registry = Registry("verifier")


def max_over_truths(ground_truth: str | list[str] | None, score: Callable[[str], float]) -> float:
    """The best ``score(truth)`` over the non-empty ground truths (stops at 1.0); 0.0 if none."""
    truths = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    best = 0.0
    for gt in truths:
        if gt is None or not str(gt).strip():
            continue
        best = max(best, float(score(str(gt))))
        if best >= 1.0:
            break
    return best


def _verifier(name: str) -> Callable[[Callable[[str, str], float]], VerifierFn]:
    """Register a single-truth scorer, adding None/empty handling, max over lists, no raising."""

    def deco(fn: Callable[[str, str], float]) -> VerifierFn:
        @functools.wraps(fn)
        def wrapper(prediction: str | None, ground_truth: str | list[str]) -> float:
            try:
                if prediction is None or not str(prediction).strip():
                    return 0.0
                best = max_over_truths(ground_truth, lambda gt: fn(str(prediction), gt))
                return min(max(best, 0.0), 1.0)
            except Exception:  # noqa: BLE001 - a verifier must never raise
                return 0.0

        VERIFIERS.register(name)(wrapper)
        return wrapper

    return deco


# ----------------------------------------------------------------------------- exact
def normalize_text(s: str) -> str:
    s = " ".join(s.lower().split())
    prev = None
    while prev != s:
        prev = s
        s = s.strip().strip("\"'`$").rstrip(".,;:!?").strip()
    return s


@_verifier("exact")
def exact(prediction: str, ground_truth: str) -> float:
    return 1.0 if normalize_text(prediction) == normalize_text(ground_truth) else 0.0


# ----------------------------------------------------------------------------- numeric
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_FRAC_RE = re.compile(rf"({_NUM})\s*/\s*({_NUM})")
_NUM_RE = re.compile(_NUM)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_UNIT_POWER_RE = re.compile(r"(?<=[A-Za-z])\s*\^\s*\{?\s*[-+]?\d+\s*\}?")


def parse_number(text: str) -> float | None:
    """The single number in `text` (see module docstring), or None."""
    s = text.strip()
    s = _LATEX_FRAC_RE.sub(r"(\1)/(\2)", s)
    s = _UNIT_POWER_RE.sub("", s)
    for tok in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\%", "^\\circ", "^{\\circ}", "\\$", "$", "\\text"):
        s = s.replace(tok, " " if tok.startswith("\\") and tok[1:].isalpha() else "")
    s = s.replace("(", " ").replace(")", " ").replace("{", " ").replace("}", " ")
    while True:
        new = _THOUSANDS_RE.sub("", s)
        if new == s:
            break
        s = new
    values: list[float] = []
    pos = 0
    for m in _FRAC_RE.finditer(s):
        values.extend(float(x) for x in _NUM_RE.findall(s[pos:m.start()]))
        den = float(m.group(2))
        if den == 0:
            return None
        values.append(float(m.group(1)) / den)
        pos = m.end()
    values.extend(float(x) for x in _NUM_RE.findall(s[pos:]))
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    first = values[0]
    if any(not math.isclose(v, first, rel_tol=1e-12, abs_tol=0.0) for v in values[1:]):
        return None
    return first


def numbers_close(a: float, b: float, rel_tol: float = 1e-4) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)


@_verifier("numeric")
def numeric(prediction: str, ground_truth: str) -> float:
    p, g = parse_number(prediction), parse_number(ground_truth)
    if p is None or g is None:
        return 0.0
    return 1.0 if numbers_close(p, g) else 0.0


# ----------------------------------------------------------------------------- math
def _math_verify(prediction: str, ground_truth: str) -> bool:
    from math_verify import parse, verify

    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    gold = parse(ground_truth, parsing_timeout=timeout)
    if not gold:
        gold = parse(f"${ground_truth}$", parsing_timeout=timeout)
    pred = parse(prediction, parsing_timeout=timeout)
    if not pred:
        pred = parse(f"${prediction}$", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


@_verifier("math")
def math_answer(prediction: str, ground_truth: str) -> float:
    try:
        if _math_verify(prediction, ground_truth):
            return 1.0
    except Exception:  # noqa: BLE001 - fall back to the numeric comparison
        pass
    return numeric(prediction, ground_truth)


# ----------------------------------------------------------------------------- multiple choice
_L = "A-J"
_MC_WHOLE = re.compile(rf"^\s*[\(\[]?\s*([{_L}])\s*[\)\]]?\s*[\.:]?\s*$", re.IGNORECASE)
_MC_LIST = re.compile(rf"^\s*[\(\[]?([{_L}])[\)\]]?(?:\s*(?:,|;|/|&|\band\b|\s)\s*[\(\[]?([{_L}])[\)\]]?)+\s*\.?\s*$",
                      re.IGNORECASE)
_MC_LIST_ITEM = re.compile(rf"(?<![A-Za-z])([{_L}])(?![A-Za-z])", re.IGNORECASE)
_MC_KEYWORD = r"(?:answer|option|choice)\s*(?:is|:|=)?\s*(?:option\s*|choice\s*)?"
_MC_PHRASE_PAREN = re.compile(rf"{_MC_KEYWORD}[\(\[]([{_L}])[\)\]]", re.IGNORECASE)
_MC_PHRASE_UPPER = re.compile(rf"(?i:{_MC_KEYWORD})([{_L}])(?![A-Za-z0-9])")
_MC_PHRASE_LOWER = re.compile(rf"(?i:{_MC_KEYWORD})([{_L.lower()}])(?=\s*(?:[.,;:!?)]|$))")
_MC_LEADING = re.compile(rf"^\s*[\(\[]?([{_L}])[\)\]\.:](?:\s|$)")
_MC_PAREN = re.compile(rf"\(([{_L}])\)", re.IGNORECASE)
_MC_BARE_LETTERS = re.compile(rf"^[{_L}]{{2,4}}$")


def extract_choices(text: str) -> set[str]:
    """Option letters named by `text` (upper-case), by priority: the whole text is a letter or a
    list of letters; else letters after "answer is"/"answer:"/"option"; else a leading "B." /
    "(B)" and parenthesised letters anywhere. Several letters at one level are all returned."""
    t = text.strip()
    m = _MC_WHOLE.match(t)
    if m:
        return {m.group(1).upper()}
    if _MC_LIST.match(t):
        return {x.upper() for x in _MC_LIST_ITEM.findall(t)}
    found = {x.upper() for r in (_MC_PHRASE_PAREN, _MC_PHRASE_UPPER, _MC_PHRASE_LOWER) for x in r.findall(t)}
    if found:
        return found
    found = {x.upper() for x in _MC_LEADING.findall(t)} | {x.upper() for x in _MC_PAREN.findall(t)}
    return found


@_verifier("multiple_choice")
def multiple_choice(prediction: str, ground_truth: str) -> float:
    gt = ground_truth.strip()
    truth = set(gt.upper()) if _MC_BARE_LETTERS.match(gt) else extract_choices(gt)
    if not truth:
        return exact(prediction, ground_truth)
    pred = extract_choices(prediction)
    return 1.0 if pred and pred == truth else 0.0
