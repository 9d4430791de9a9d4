"""Benchmark metrics from scored records (:func:`metis.eval.scoring.score_records`).

:func:`aggregate` gives accuracy over the rows that could be scored (``unscored`` rows, whose
check could not be completed, are counted apart and never enter a mean), its standard error,
sub-accuracies by meta fields (a list-valued field, e.g. LogicVista's skills, counts the row in
each of its groups), benchmark-specific metrics (``EXTRA_METRICS``) and tool use.
"""

from __future__ import annotations

import ast
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from metis.utils.registry import Registry

EXTRA_METRICS: Registry = Registry("benchmark metric")


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")


def stderr(xs: Iterable[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); NaN below two values."""
    xs = [float(x) for x in xs]
    n = len(xs)
    if n < 2:
        return float("nan")
    m = sum(xs) / n
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def is_scored(rec: dict[str, Any]) -> bool:
    return rec.get("verdict_status") != "unscored" and rec.get("score") is not None


def group_values(value: Any) -> list[str]:
    """The groups a meta value puts a row in: a list (or its string form, as TSVs store it) gives
    one group per element; a scalar one group; dicts and empty values none."""
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            pass
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    if value is None or isinstance(value, dict) or (isinstance(value, str) and not value.strip()):
        return []
    return [str(value)]


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
    """Benchmark metrics (fractions in [0, 1], counts as floats). ``n`` counts every row,
    ``scored`` the rows in the accuracy, ``unscored`` the rest."""
    ok = [r for r in scored if is_scored(r)]
    out: dict[str, float] = {"n": float(len(scored)), "scored": float(len(ok)),
                             "unscored": float(len(scored) - len(ok)),
                             "accuracy": _mean(r["score"] for r in ok),
                             "accuracy_stderr": stderr(r["score"] for r in ok)}
    status = Counter(r["verdict_status"] for r in ok)
    out["unanswered"] = float(status["unanswered"])
    out["unanswered_rate"] = status["unanswered"] / len(ok) if ok else float("nan")
    out["judged"] = float(sum(r["verdict_method"] == "judge" for r in ok))
    out["judge_failures"] = float(sum(str(r.get("verdict_note", "")).startswith("judge_") for r in scored))
    out["undecided"] = float(sum(r["verdict_note"] == "undecided" for r in ok))
    out.update(tool_metrics(scored))
    used = [r for r in ok if r.get("num_tool_calls", 0) > 0 and not r.get("error")]
    unused = [r for r in ok if r.get("num_tool_calls", 0) == 0 and not r.get("error")]
    out["accuracy_with_tools"] = _mean(r["score"] for r in used)
    out["accuracy_without_tools"] = _mean(r["score"] for r in unused)
    for key in group_by:
        groups: dict[str, list[float]] = defaultdict(list)
        for r in ok:
            for value in group_values((r.get("meta") or {}).get(key)):
                groups[value].append(r["score"])
        for value, scores in sorted(groups.items()):
            out[f"accuracy/{key}={value}"] = _mean(scores)
    for name in extra_metrics:
        out.update(EXTRA_METRICS.get(name)(ok))
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
    counts only when every one of its variants, grouped by ``qid``, is right), with its error."""
    by_q: dict[str, list[float]] = defaultdict(list)
    for r in scored:
        by_q[str((r.get("meta") or {}).get("qid", r["id"]))].append(r["score"])
    worst = [float(min(v) >= 1.0) for v in by_q.values()]
    return {"dynamath/average_case": _mean(r["score"] for r in scored),
            "dynamath/worst_case": _mean(worst), "dynamath/worst_case_stderr": stderr(worst)}


@EXTRA_METRICS.register("wemath")
def wemath_metrics(scored: Sequence[dict[str, Any]]) -> dict[str, float]:
    """WeMath four-dimensional diagnosis and its Score (Strict/Loose), as the benchmark defines them.

    A composite problem (``key`` "2steps_multi" / "3steps_multi") and its one-step parts
    ("2steps_1", …) share an ``ID``. With the steps and the composite each right or wrong:
    IK = some step wrong, composite wrong; IG = every step right, composite wrong;
    CM strict = every step right and composite right (loose: at least one step right);
    RM strict = some step wrong, composite right (loose: every step wrong).
    Score = (N - 0.5 IG - RM - IK) / N over the N composite problems (N = 525 on testmini);
    IK/IG/CM are fractions of N, RM of CM + RM. Problems missing a part are left out."""
    groups: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in scored:
        meta = r.get("meta") or {}
        key, pid = str(meta.get("key", "")), meta.get("ID")
        m = re.match(r"(\d)steps_(\w+)", key)
        if m and pid is not None:
            groups[(m.group(1), str(pid))][m.group(2)] = r["score"]
    counts: Counter[str] = Counter()
    for (steps, _), parts in groups.items():
        wanted = {str(i) for i in range(1, int(steps) + 1)} | {"multi"}
        if not wanted <= set(parts):
            continue
        step_ok = [parts[str(i)] >= 1.0 for i in range(1, int(steps) + 1)]
        multi_ok = parts["multi"] >= 1.0
        counts["N"] += 1
        if not multi_ok:
            counts["IG" if all(step_ok) else "IK"] += 1
            continue
        counts["CM_strict" if all(step_ok) else "RM_strict"] += 1
        counts["CM_loose" if any(step_ok) else "RM_loose"] += 1
    n = counts["N"]
    if not n:
        return {}
    out = {"wemath/composites": float(n), "wemath/IK": counts["IK"] / n, "wemath/IG": counts["IG"] / n}
    for mode in ("strict", "loose"):
        cm, rm = counts[f"CM_{mode}"], counts[f"RM_{mode}"]
        out[f"wemath/CM_{mode}"] = cm / n
        out[f"wemath/RM_{mode}"] = rm / (cm + rm) if cm + rm else float("nan")
        out[f"wemath/score_{mode}"] = (n - 0.5 * counts["IG"] - rm - counts["IK"]) / n
    return out



_BOX = re.compile(r"<box>\s*\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,"
                  r"\s*(-?\d+(?:\.\d+)?)\s*\]\s*</box>")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x1, y1, x2, y2] boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def response_boxes(text: str) -> list[list[float]]:
    """The valid ``<box>[x1,y1,x2,y2]</box>`` boxes of a response (x1 < x2, y1 < y2)."""
    boxes = [[float(v) for v in m] for m in _BOX.findall(str(text or ""))]
    return [b for b in boxes if b[0] < b[2] and b[1] < b[3]]


def sample_iou(text: str, targets: Sequence[Sequence[float]]) -> float:
    """TreeBench's per-sample box score: for each target box the best IoU over the predicted boxes,
    averaged over the targets; 0 without a predicted box, 1 when there is no target but a box."""
    boxes = response_boxes(text)
    if not boxes:
        return 0.0
    if not targets:
        return 1.0
    return _mean(max(box_iou(t, b) for b in boxes) for t in targets)


@EXTRA_METRICS.register("treebench")
def treebench_metrics(scored: Sequence[dict[str, Any]]) -> dict[str, float]:
    """TreeBench: mean box IoU of the boxes the response traces (``target_instances`` from the data)
    and accuracy per top-level dimension (``category`` "Perception/Attributes" -> Perception)."""
    out: dict[str, float] = {}
    ious = []
    dims: dict[str, list[float]] = defaultdict(list)
    for r in scored:
        meta = r.get("meta") or {}
        targets = meta.get("target_instances")
        if isinstance(targets, str):
            try:
                targets = ast.literal_eval(targets)
            except (ValueError, SyntaxError):
                targets = None
        if isinstance(targets, (list, tuple)):
            ious.append(sample_iou(r.get("response") or r.get("final_answer") or "", targets))
        category = str(meta.get("category", ""))
        if "/" in category:
            dims[category.split("/")[0]].append(r["score"])
    if ious:
        out["treebench/mIoU"] = _mean(ious)
    for dim, scores in sorted(dims.items()):
        out[f"treebench/accuracy/{dim}"] = _mean(scores)
    return out
