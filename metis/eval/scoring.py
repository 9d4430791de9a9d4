"""Scoring evaluation predictions: rules first, the LLM judge only where rules cannot decide.

Per sample (:func:`score_prediction`):
- no ``<answer>`` (or an empty one) -> ``unanswered`` (score 0), never a guess;
- multiple choice: option letters are extracted (:func:`extract_option_letters`: the verifier's
  extraction, then a lone option letter in prose, then the option text); the set of letters must
  equal the ground truth's. Nothing extractable -> the judge if configured, else ``unanswered``;
- numeric / math: :mod:`metis.rl.verifiers` (math-verify, then numbers with units, fractions,
  LaTeX). A match is final; a mismatch is final when both sides parse as numbers; otherwise the
  judge decides if configured, else the rule's 0 stands (``undecided``);
- exact: a match is final; a mismatch goes to the judge if configured.
A judge that fails (``JudgeUnavailable``) leaves the rule verdict and is counted, never fatal.

Per benchmark (:func:`aggregate`): accuracy, sub-accuracies by meta fields, benchmark-specific
metrics (``EXTRA_METRICS``: HRBench cycle averages, DynaMath worst case, WeMath IK/IG/CM/RM),
and tool use: tool-use rate, mean tool calls, calls per tool, mean turns, failures.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from metis.io.judge import JudgeUnavailable
from metis.rl.verifiers import VERIFIERS, extract_choices, normalize_text, parse_number
from metis.utils.registry import Registry

log = logging.getLogger("metis.eval")

EXTRA_METRICS: Registry = Registry("benchmark metric")
_LETTER_TOKEN = re.compile(r"(?<![A-Za-z0-9'])([A-J])(?![A-Za-z0-9'])")
_BARE_LETTERS = re.compile(r"^\s*\(?[A-J]\)?(\s*[,;/&]?\s*(and\s+)?\(?[A-J]\)?)*\s*$")


@dataclass
class Verdict:
    score: float  # 1.0 correct, 0.0 otherwise
    status: str  # correct | wrong | unanswered
    method: str  # rule | judge | none
    extracted: str | None = None  # what the rules read from the prediction (letters or the answer)
    note: str = ""  # undecided | judge_unavailable | runtime_error | ...


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
def _judge(judge, question: str, truth, prediction: str, rule: Verdict) -> Verdict:
    try:
        score = float(judge.judge(question, truth, prediction))
    except JudgeUnavailable as err:
        log.warning("judge unavailable, keeping the rule verdict: %s", err)
        return Verdict(rule.score, rule.status, rule.method, rule.extracted, "judge_unavailable")
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


def score_records(records: Sequence[dict[str, Any]], judge=None) -> list[dict[str, Any]]:
    """Each prediction record (see :mod:`metis.eval.runner`) with its verdict merged in."""
    out = []
    for rec in records:
        if rec.get("error"):
            verdict = Verdict(0.0, "unanswered", "none", None, "runtime_error")
        else:
            verdict = score_prediction(rec.get("final_answer"), rec["answer"], rec.get("verifier", "exact"),
                                       (rec.get("meta") or {}).get("options"), rec.get("question", ""), judge)
        out.append({**rec, **{f"verdict_{k}" if k != "score" else "score": v for k, v in asdict(verdict).items()}})
    return out


# ----------------------------------------------------------------------------- aggregation
def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")


def tool_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Tool-use numbers over prediction records (runtime failures excluded from the means)."""
    done = [r for r in records if not r.get("error")]
    per_tool: Counter[str] = Counter()
    users: Counter[str] = Counter()
    for r in done:
        names = [str(t) if t is not None else "_unparsed" for t in r.get("tool_calls") or []]
        per_tool.update(names)
        users.update(set(names))
    calls = sum(int(r.get("num_tool_calls", 0)) for r in done)
    out = {
        "tool_use_rate": _mean(float(r.get("num_tool_calls", 0) > 0) for r in done),
        "mean_tool_calls": _mean(float(r.get("num_tool_calls", 0)) for r in done),
        "mean_turns": _mean(float(r.get("num_turns", 0)) for r in done),
        "tool_calls": float(calls),
        "tool_errors": float(sum(int(r.get("tool_errors", 0)) for r in done)),
        "tool_error_rate": float(sum(int(r.get("tool_errors", 0)) for r in done) / calls) if calls else 0.0,
        "truncated": float(sum(bool(r.get("truncated")) for r in done)),
        "runtime_errors": float(len(records) - len(done)),
    }
    for name in sorted(per_tool):
        out[f"tool_calls/{name}"] = float(per_tool[name])
        out[f"tool_use_rate/{name}"] = users[name] / len(done) if done else float("nan")
    return out


def aggregate(scored: Sequence[dict[str, Any]], group_by: Sequence[str] = (),
              extra_metrics: Sequence[str] = ()) -> dict[str, float]:
    """Benchmark metrics from scored records (fractions in [0, 1], counts as floats)."""
    out: dict[str, float] = {"n": float(len(scored)), "accuracy": _mean(r["score"] for r in scored)}
    status = Counter(r["verdict_status"] for r in scored)
    out["unanswered"] = float(status["unanswered"])
    out["unanswered_rate"] = status["unanswered"] / len(scored) if scored else float("nan")
    out["judged"] = float(sum(r["verdict_method"] == "judge" for r in scored))
    out["judge_failures"] = float(sum(r["verdict_note"] == "judge_unavailable" for r in scored))
    out["undecided"] = float(sum(r["verdict_note"] == "undecided" for r in scored))
    out.update(tool_metrics(scored))
    used = [r for r in scored if r.get("num_tool_calls", 0) > 0 and not r.get("error")]
    unused = [r for r in scored if r.get("num_tool_calls", 0) == 0 and not r.get("error")]
    out["accuracy_with_tools"] = _mean(r["score"] for r in used)
    out["accuracy_without_tools"] = _mean(r["score"] for r in unused)
    for key in group_by:
        groups: dict[str, list[float]] = defaultdict(list)
        for r in scored:
            value = (r.get("meta") or {}).get(key)
            if value is not None and not isinstance(value, (list, dict)):
                groups[str(value)].append(r["score"])
        for value, scores in sorted(groups.items()):
            out[f"accuracy/{key}={value}"] = _mean(scores)
    for name in extra_metrics:
        out.update(EXTRA_METRICS.get(name)(scored))
    return out


@EXTRA_METRICS.register("hrbench")
def hrbench_metrics(scored: Sequence[dict[str, Any]]) -> dict[str, float]:
    """HRBench: accuracy per ``category`` (single = FSP, cross = FCP) and overall, each averaged
    over the ``cycle_category`` groups (the rotated-option copies) as the official script does."""
    cycles: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in scored:
        cycles[str((r.get("meta") or {}).get("cycle_category", "all"))].append(r)
    sums: dict[str, list[float]] = defaultdict(list)
    for rows in cycles.values():
        sums["all"].append(_mean(r["score"] for r in rows))
        by_cat: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            by_cat[str((r.get("meta") or {}).get("category", "unknown"))].append(r["score"])
        for cat, scores in by_cat.items():
            sums[cat].append(_mean(scores))
    return {f"hrbench/{k}": _mean(v) for k, v in sums.items()}


@EXTRA_METRICS.register("dynamath")
def dynamath_metrics(scored: Sequence[dict[str, Any]]) -> dict[str, float]:
    """DynaMath: average-case accuracy (the plain mean) and worst-case accuracy (a seed question
    counts only when every one of its variants, grouped by ``qid``, is right)."""
    by_q: dict[str, list[float]] = defaultdict(list)
    for r in scored:
        by_q[str((r.get("meta") or {}).get("qid", r["id"]))].append(r["score"])
    return {"dynamath/average_case": _mean(r["score"] for r in scored),
            "dynamath/worst_case": _mean(float(min(v) >= 1.0) for v in by_q.values())}


@EXTRA_METRICS.register("wemath")
def wemath_metrics(scored: Sequence[dict[str, Any]]) -> dict[str, float]:
    """WeMath four-dimensional diagnosis over multi-step problems (``key`` "2steps_multi" /
    "3steps_multi" vs their one-step parts "2steps_1", … sharing an ``ID``): IK (a step wrong and the
    composite wrong), IG (all steps right, composite wrong), CM (all right), RM (composite right,
    a step wrong), as fractions of the composite problems. The official Score (Strict/Loose)
    aggregate is not reproduced (see docs/evaluation.md)."""
    groups: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in scored:
        meta = r.get("meta") or {}
        key, pid = str(meta.get("key", "")), meta.get("ID")
        m = re.match(r"(\d)steps_(\w+)", key)
        if m and pid is not None:
            groups[(m.group(1), str(pid))][m.group(2)] = r["score"]
    counts: Counter[str] = Counter()
    for parts in groups.values():
        if "multi" not in parts or len(parts) < 2:
            continue
        steps_ok = all(v >= 1.0 for k, v in parts.items() if k != "multi")
        multi_ok = parts["multi"] >= 1.0
        counts["CM" if steps_ok and multi_ok else "IG" if steps_ok else "RM" if multi_ok else "IK"] += 1
    total = sum(counts.values())
    if not total:
        return {}
    return {f"wemath/{k}": counts[k] / total for k in ("IK", "IG", "CM", "RM")} | {"wemath/composites": float(total)}


