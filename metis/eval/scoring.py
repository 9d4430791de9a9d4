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

from metis.rl.judge import JudgeUnavailable
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
def truth_letters(ground_truth: str, options: dict[str, str] | None) -> set[str]:
    gt = str(ground_truth).strip()
    if _BARE_LETTERS.match(gt) or re.fullmatch(r"[A-J]{2,4}", gt):
        return {c for c in gt.upper() if c in "ABCDEFGHIJ"}
    for letter, text in (options or {}).items():
        if normalize_text(text) == normalize_text(gt):
            return {letter}
    return extract_choices(gt) if len(gt) <= 30 else set()


def extract_option_letters(prediction: str, options: dict[str, str] | None = None) -> set[str]:
    """Option letters a prediction names; empty when it names none (never a guess).

    1. :func:`metis.rl.verifiers.extract_choices` ("B", "(b)", "B. red", "the answer is B", "A, C");
    2. upper-case option letters standing alone in prose ("I pick C here"; "A or B" gives both);
       "A"/"I" in a sentence of more than three words are read as words, not letters;
    3. the prediction is (or contains exactly one) option text.
    Letters outside the known options are ignored.
    """
    valid = set(options) if options else set("ABCDEFGHIJ")
    found = {x for x in extract_choices(prediction) if x in valid}
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
class GuardedJudge:
    """A judge that is taken as down after ``max_failures`` consecutive ``JudgeUnavailable``:
    later calls raise at once (no request), so a dead endpoint costs a few timeouts, not one per row."""

    def __init__(self, judge, max_failures: int = 3) -> None:
        self.judge_impl, self.max_failures = judge, max(1, int(max_failures))
        self.consecutive = 0
        self.failures = 0
        self.last_error = ""

    @property
    def down(self) -> bool:
        return self.consecutive >= self.max_failures

    def judge(self, question: str, truth, prediction: str) -> float:
        if self.down:
            raise JudgeUnavailable(f"judge down after {self.consecutive} failures in a row ({self.last_error})")
        try:
            score = float(self.judge_impl.judge(question, truth, prediction))
        except JudgeUnavailable as err:
            self.consecutive += 1
            self.failures += 1
            self.last_error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            if self.down:
                log.error("judge failed %d times in a row; the remaining rows that need it stay unscored: %s",
                          self.consecutive, self.last_error)
            raise
        self.consecutive = 0
        return score


def _judge(judge, question: str, truth, prediction: str, rule: Verdict) -> Verdict:
    down = bool(getattr(judge, "down", False))
    try:
        score = float(judge.judge(question, truth, prediction))
    except JudgeUnavailable as err:
        log.debug("judge unavailable, row unscored: %s", err)
        return Verdict(None, UNSCORED, "judge", rule.extracted, "judge_down" if down else "judge_unavailable")
    return Verdict(score, "correct" if score > 0 else "wrong", "judge", rule.extracted, rule.note)


def score_prediction(prediction: str | None, ground_truth: str | list[str], verifier: str,
                     options: dict[str, str] | None = None, question: str = "", judge=None) -> Verdict:
    """One prediction against its ground truth(s); see the module docstring for the policy."""
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
            return _judge(judge, question, ground_truth, prediction, rule) if judge is not None else rule
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
    return _judge(judge, question, ground_truth, prediction, rule)


def score_records(records: Sequence[dict[str, Any]], judge=None, truth: Mapping[str, Any] | None = None,
                  answer_rule: str | None = None, max_judge_failures: int = 3) -> list[dict[str, Any]]:
    """Each prediction record (see :mod:`metis.eval.runner`) with its verdict merged in.

    ``truth`` (id -> :class:`metis.data.task.Task`) replaces the ground truth, verifier, options
    and meta stored in the record by the current data (a fixed answer re-scores correctly);
    records whose id it lacks are left out. ``answer_rule`` names a :data:`metis.eval.rules.ANSWER_RULES`
    entry."""
    from metis.eval.rules import ANSWER_RULES

    guard = None if judge is None else judge if isinstance(judge, GuardedJudge) else GuardedJudge(judge, max_judge_failures)
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
            args = (rec.get("final_answer"), rec["answer"], rec.get("verifier", "exact"), options,
                    rec.get("question", ""), guard)
            verdict = rule_fn(*args, meta=rec.get("meta") or {}) if rule_fn else score_prediction(*args)
        out.append({**rec, **{f"verdict_{k}" if k != "score" else "score": v for k, v in asdict(verdict).items()}})
    return out
