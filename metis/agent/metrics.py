"""Behaviour metrics of a batch of rollouts: accuracy, format, tool use (overall and by need)."""

from __future__ import annotations

from typing import Sequence

from metis.core.trajectory import Trajectory
from metis.rl.types import AdvantageResult, RolloutScores


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def rollout_metrics(trajs: Sequence[Trajectory], scores: RolloutScores,
                    result: AdvantageResult | None) -> dict[str, float]:
    """Per-step numbers logged in training and evaluation.

    ``unnecessary_tool_rate`` is the tool-call rate on tasks that do not need a tool and
    ``necessary_tool_rate`` on those that do (only where ``Task.needs_tool`` is known).
    """
    correct = [float(x > 0) for x in scores.r_ans.tolist()]
    used = [float(t.num_tool_calls > 0) for t in trajs]
    out = {
        "accuracy": _mean(scores.r_ans.tolist()),
        "format_rate": _mean(scores.r_fmt.tolist()),
        "tool_call_rate": _mean(used),
        "mean_tool_calls": _mean([t.num_tool_calls for t in trajs]),
        "tool_error_rate": _mean([t.tool_errors / t.num_tool_calls for t in trajs if t.num_tool_calls]) if any(used) else 0.0,
        "truncated_rate": _mean([float(t.truncated) for t in trajs]),
        "answered_rate": _mean([float(t.final_answer is not None) for t in trajs]),
        "mean_turns": _mean([t.num_turns for t in trajs]),
        "response_length": _mean([sum(t.response_mask) for t in trajs]),
        "response_length_max": float(max(sum(t.response_mask) for t in trajs)),
    }
    for name, need in (("needed", True), ("unneeded", False)):
        rows = [i for i, t in enumerate(trajs) if t.task.needs_tool is need]
        if rows:
            out[f"accuracy_tool_{name}"] = _mean([correct[i] for i in rows])
            out[f"{'necessary' if need else 'unnecessary'}_tool_rate"] = _mean([used[i] for i in rows])
    if result is not None:
        out.update({k: float(v) for k, v in result.metrics.items()})
    return out


def engine_logprob_gap(trajs: Sequence[Trajectory], trainer_logprobs) -> dict[str, float]:
    """Mean and max |trainer - engine| log-prob over model tokens, where the engine reported them."""
    gaps: list[float] = []
    for row, t in enumerate(trajs):
        if not t.engine_logprobs:
            continue
        positions = [j for j, m in enumerate(t.response_mask) if m][: len(t.engine_logprobs)]
        mine = trainer_logprobs[row, positions].tolist()
        gaps.extend(abs(a - b) for a, b in zip(mine, t.engine_logprobs))
    if not gaps:
        return {}
    return {"logprob_gap/mean": _mean(gaps), "logprob_gap/max": max(gaps)}


def source_name(data_source: str) -> str:
    """A data_source as one metric-path segment."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(data_source)) or "unknown"


def source_metrics(trajs: Sequence[Trajectory], r_ans: Sequence[float], scored: Sequence[bool]) -> dict[str, float]:
    """Per ``data_source``: ``source/<name>/accuracy`` (scored rollouts only), ``tool_call_rate``,
    ``mean_tool_calls``, ``rollouts`` and ``unscored``: what a researcher watches on real prompts,
    which carry no ``needs_tool`` label."""
    by_source: dict[str, list[int]] = {}
    for i, t in enumerate(trajs):
        by_source.setdefault(source_name(t.task.data_source), []).append(i)
    out: dict[str, float] = {}
    for name, rows in sorted(by_source.items()):
        judged = [i for i in rows if scored[i]]
        prefix = f"source/{name}/"
        if judged:
            out[prefix + "accuracy"] = _mean([float(r_ans[i]) for i in judged])
        out[prefix + "tool_call_rate"] = _mean([float(trajs[i].num_tool_calls > 0) for i in rows])
        out[prefix + "mean_tool_calls"] = _mean([trajs[i].num_tool_calls for i in rows])
        out[prefix + "rollouts"] = float(len(rows))
        out[prefix + "unscored"] = float(len(rows) - len(judged))
    return out


def rollout_records(trajs: Sequence[Trajectory], checked, result: AdvantageResult | None, keep: Sequence[int],
                    rl_step: int) -> list[dict]:
    """One JSON-able row per rollout for ``rollouts/<split>.jsonl``: its summary, data_source,
    verifier and scores; the advantages of those in the update (``keep``). An unscored rollout
    (``scored: false``) has no ``r_ans`` and no advantage."""
    in_update = set(keep)
    rows = []
    for i, t in enumerate(trajs):
        ok = checked.scored[i]
        rec = t.summary() | {"rl_step": rl_step, "data_source": t.task.data_source, "verifier": t.task.verifier,
                             "scored": ok, "r_ans": float(checked.scores.r_ans[i]) if ok else None,
                             "r_fmt": float(checked.scores.r_fmt[i])}
        if result is not None and i in in_update:
            rec |= {f"adv_{c.name}": float(c.advantages[i]) for c in result.channels}
        rows.append(rec)
    return rows


def update_means(updates: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over a step's PPO updates (an update that lacks a metric is not counted)."""
    keys = dict.fromkeys(k for m in updates for k in m)
    return {k: sum(m[k] for m in updates if k in m) / sum(k in m for m in updates) for k in keys}


def rollout_counter_metrics(counters: dict[str, float], t_rollout: float) -> dict[str, float]:
    """The step's loop and engine counters as ``rollout/<name>``, with the share of the rollout time
    spent waiting for tools (``rollout/tool_wait_frac``)."""
    out = {f"rollout/{k}": float(v) for k, v in counters.items()}
    if "tool_wait_s" in counters and t_rollout > 0:
        out["rollout/tool_wait_frac"] = counters["tool_wait_s"] / t_rollout
    return out
