"""Scoring evaluation predictions: rules first, the LLM judge only where rules cannot decide.

Per sample (:func:`score_prediction`):
- no ``<answer>`` (or an empty one) -> ``unanswered`` (score 0), never a guess;
- a benchmark rule (:mod:`metis.eval.rules`, ``benchmark.answer_rule``) may first rewrite the
  prediction (DynaMath's JSON "short answer") or decide it (MathVista's precision);
- multiple choice: option letters are extracted (:func:`extract_option_letters`: the verifier's
  extraction, then a lone option letter in prose, then the option text); the set of letters must
  equal the ground truth's. Nothing extractable -> the judge if configured, else ``unanswered``;
- numeric / math: :mod:`metis.rl.verifiers` (math-verify, then numbers with units, fractions,
  LaTeX). A match is final; a mismatch is final when both sides parse as numbers; otherwise the
  judge decides if configured, else the rule's 0 stands (``undecided``);
- exact: a match is final; a mismatch goes to the judge if configured.

A judge that fails (``JudgeUnavailable``) makes the row ``unscored`` (score None): it is never
a wrong answer. After ``max_judge_failures`` failures in a row the judge is taken as down and
the remaining rows that need it are ``unscored`` without further requests (a hanging judge
costs minutes per request). Aggregation lives in :mod:`metis.eval.metrics`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from metis.eval.judging import GuardedJudge
from metis.io.judge import JudgeUnavailable
from metis.rl.verifiers import VERIFIERS, extract_choices, normalize_text, parse_number

log = logging.getLogger("metis.eval")

UNSCORED = "unscored"
_LETTER_TOKEN = re.compile(r"(?<![A-Za-z0-9'])([A-J])(?![A-Za-z0-9'])")
_BARE_LETTERS = re.compile(r"^\s*\(?[A-J]\)?(\s*[,;/&]?\s*(and\s+)?\(?[A-J]\)?)*\s*$")


@dataclass
class Verdict:
    score: float | None  # 1.0 correct, 0.0 wrong/unanswered, None unscored (the check could not be made)
    status: str  # correct | wrong | unanswered | unscored
    method: str  # rule | judge | none
    extracted: str | None = None  # what the rules read from the prediction (letters or the answer)
    note: str = ""  # undecided | judge_unavailable | judge_down | runtime_error | ...


# ----------------------------------------------------------------------------- options
_ANSWER_PHRASE = re.compile(r"^\s*(?:the\s+)?(?:correct\s+|final\s+)?(?:answers?|options?|choices?)\s*(?:is|are|:)?\s*",
                            re.IGNORECASE)


def letter_list(text: str) -> set[str]:
    """The letters of a bare letter list, after an optional "the answer is" ("A, C", "(A) and (C)",
    "The answers are A and C."); empty when the text is anything else."""
    t = _ANSWER_PHRASE.sub("", str(text).strip()).strip().rstrip(".").strip()
    if not _BARE_LETTERS.match(t):
        return set()
    return set(re.findall(r"[A-J]", re.sub(r"\band\b", " ", t)))


def truth_letters(ground_truth: str, options: dict[str, str] | None) -> set[str]:
    gt = str(ground_truth).strip()
    if re.fullmatch(r"[A-J]{2,4}", gt):
        return set(gt)
    letters = letter_list(gt)
    if letters:
        return letters
    for letter, text in (options or {}).items():
        if normalize_text(text) == normalize_text(gt):
            return {letter}
    return extract_choices(gt) if len(gt) <= 30 else set()


def extract_option_letters(prediction: str, options: dict[str, str] | None = None) -> set[str]:
    """Option letters a prediction names; empty when it names none (never a guess).

    1. a bare letter list, after an optional "the answer is" ("A, C", "The answer is A and C"), then
       :func:`metis.rl.verifiers.extract_choices` ("B", "(b)", "B. red", "the answer is B");
    2. upper-case option letters standing alone in prose ("I pick C here"; "A or B" gives both);
       "A"/"I" in a sentence of more than three words are read as words, not letters;
    3. the prediction is (or contains exactly one) option text.
    Letters outside the known options are ignored.
    """
    valid = set(options) if options else set("ABCDEFGHIJ")
    found = {x for x in letter_list(prediction) if x in valid} or {x for x in extract_choices(prediction) if x in valid}
    if found:
        return found
    words = prediction.split()
    tokens = {m for m in _LETTER_TOKEN.findall(prediction) if m in valid}
    if len(words) > 3:
        tokens -= {"A", "I"}
    if tokens:  # several letters in prose ("A or B") stay several: wrong unless the truth is that set
        return tokens
    if options:
        norm = normalize_text(prediction)
        exact = {k for k, v in options.items() if normalize_text(v) == norm and norm}
        if exact:
            return exact
        inside = {k for k, v in options.items()
                  if len(normalize_text(v)) >= 2 and re.search(rf"(?<!\w){re.escape(normalize_text(v))}(?!\w)", norm)}
        # an option text inside another (e.g. "red" in "dark red") makes the match ambiguous
        if len(inside) == 1:
            return inside
    return set()


# ----------------------------------------------------------------------------- one sample
def _fill(grading: str | None, prediction: str) -> str | None:
    return None if grading is None else grading.replace("{PREDICTION}", prediction)


def _judge(judge, question: str, truth, prediction: str, rule: Verdict, grading: str | None = None) -> Verdict:
    """The judge's verdict on a row the rules could not decide; ``grading`` is a benchmark's own
    complete grading prompt, used instead of the generic one when the judge can take it."""
    down = bool(getattr(judge, "down", False))
    try:
        if grading is not None and getattr(judge, "can_grade", False):
            score = float(judge.grade(grading))
        else:
            score = float(judge.judge(question, truth, prediction))
    except JudgeUnavailable as err:
        log.debug("judge unavailable, row unscored: %s", err)
        return Verdict(None, UNSCORED, "judge", rule.extracted, "judge_down" if down else "judge_unavailable")
    return Verdict(score, "correct" if score > 0 else "wrong", "judge", rule.extracted, rule.note)


def score_prediction(prediction: str | None, ground_truth: str | list[str], verifier: str,
                     options: dict[str, str] | None = None, question: str = "", judge=None,
                     grading: str | None = None) -> Verdict:
    """One prediction against its ground truth(s); see the module docstring for the policy.
    ``grading`` is the benchmark's own grading prompt for this row (CharXiv's ``grading_query``
    with ``{PREDICTION}``), sent to the judge instead of the generic prompt."""
    if prediction is None or not str(prediction).strip():
        return Verdict(0.0, "unanswered", "none", None, "no_answer")
    prediction = str(prediction)
    truths = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    if verifier == "multiple_choice":
        want = [truth_letters(t, options) for t in truths]
        if any(want):
            letters = extract_option_letters(prediction, options)
            if letters:
                ok = any(letters == w for w in want if w)
                return Verdict(float(ok), "correct" if ok else "wrong", "rule", ",".join(sorted(letters)))
            rule = Verdict(0.0, "unanswered", "none", None, "no_option")
            if judge is None:
                return rule
            return _judge(judge, question, ground_truth, prediction, rule, _fill(grading, prediction))
        verifier = "exact"  # a ground truth that names no option: compare as text
    fn = VERIFIERS.get(verifier)
    score = float(fn(prediction, ground_truth))
    if score >= 1.0:
        return Verdict(1.0, "correct", "rule", prediction.strip())
    decided = verifier in ("numeric", "math") and parse_number(prediction) is not None and all(
        parse_number(str(t)) is not None for t in truths)
    rule = Verdict(0.0, "wrong", "rule", prediction.strip(), "" if decided else "undecided")
    if decided or judge is None:
        return rule
    return _judge(judge, question, ground_truth, prediction, rule, _fill(grading, prediction))


def score_records(records: Sequence[dict[str, Any]], judge=None, truth: Mapping[str, Any] | None = None,
                  answer_rule: str | None = None, max_judge_failures: int = 3,
                  probe_timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Each prediction record (see :mod:`metis.eval.runner`) with its verdict merged in.

    ``truth`` (id -> :class:`metis.core.task.Task`) replaces the ground truth, verifier, options
    and meta stored in the record by the current data (a fixed answer re-scores correctly);
    records whose id it lacks are left out. ``answer_rule`` names a :data:`metis.eval.rules.ANSWER_RULES`
    entry."""
    from metis.eval.rules import ANSWER_RULES

    guard = None if judge is None or isinstance(judge, GuardedJudge) else GuardedJudge(judge, max_judge_failures,
                                                                                     probe_timeout_s)
    guard = guard or judge
    rule_fn = ANSWER_RULES.get(answer_rule) if answer_rule else None
    out = []
    for rec in records:
        if truth is not None:
            task = truth.get(str(rec.get("id")))
            if task is None:
                continue
            rec = {**rec, "answer": task.answer, "verifier": task.verifier, "meta": task.meta,
                   "question": rec.get("question") or task.question}
        if rec.get("error"):
            verdict = Verdict(0.0, "unanswered", "none", None, "runtime_error")
        else:
            options = (rec.get("meta") or {}).get("options")
            meta = rec.get("meta") or {}
            args = (rec.get("final_answer"), rec["answer"], rec.get("verifier", "exact"), options,
                    rec.get("question", ""), guard, meta.get("grading_query"))
            verdict = rule_fn(*args, meta=meta) if rule_fn else score_prediction(*args)
        out.append({**rec, **{f"verdict_{k}" if k != "score" else "score": v for k, v in asdict(verdict).items()}})
    return out
