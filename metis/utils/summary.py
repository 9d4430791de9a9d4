"""The metric lines of the end-of-run summary (pure functions of the logged numbers)."""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Mapping

# (logged key, label) in print order; a key is printed once, and only if the run logged it
RL_KEYS = [
    ("val/accuracy", "val accuracy"),
    ("val/accuracy_tool_needed", "val acc, tool needed"),
    ("val/accuracy_tool_unneeded", "val acc, tool unneeded"),
    ("val/unnecessary_tool_rate", "val unnecessary tools"),
    ("val/necessary_tool_rate", "val necessary tools"),
    ("val/tool_call_rate", "val tool-call rate"),
    ("train/accuracy", "train accuracy"),
    ("train/tool_call_rate", "train tool-call rate"),
    ("train/unnecessary_tool_rate", "train unnecessary tools"),
    ("train/mean_tool_calls", "train mean calls"),
    ("train/format_rate", "train format rate"),
    ("train/rho_Q", "train rho_Q"),
]
SFT_KEYS = [("train/loss", "train loss"), ("val/loss", "val loss")]


def _num(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def metric_lines(metrics: Mapping[str, float], before: Mapping[str, float] | None = None,
                 rl_step: int | None = None, skip: frozenset[str] = frozenset()) -> list[str]:
    """``  <label> : <value>`` lines; with ``before`` (the validation before the first RL step), the
    validation numbers read ``before -> after``. ``skip``: keys printed elsewhere (the sampled trend)."""
    before = before or {}
    keys = RL_KEYS if any(k.startswith("train/rl_step") or k.startswith("val/accuracy") for k in metrics) \
        else SFT_KEYS + [(k, k) for k in sorted(metrics) if k.endswith("loss") and k not in dict(SFT_KEYS)]
    lines = []
    if any(k in metrics for k in before):
        steps = f" {rl_step} RL steps" if rl_step is not None else " training"
        lines.append(f"  (val: greedy on the validation prompts; before -> after{steps})")
    for key, label in keys:
        if key not in metrics or key in skip:
            continue
        if key in before:
            lines.append(f"  {label:<25}: {_num(before[key])} -> {_num(metrics[key])}")
        else:
            lines.append(f"  {label:<25}: {_num(metrics[key])}")
    return lines


TREND_KEYS = [
    ("train/accuracy", "accuracy"),
    ("train/accuracy_tool_needed", "acc, tool needed"),
    ("train/unnecessary_tool_rate", "unneeded calls"),
    ("train/necessary_tool_rate", "needed calls"),
    ("train/tool_call_rate", "tool-call rate"),
]


def trend_lines(label: str, first: Mapping[str, float], last: Mapping[str, float]) -> list[str]:
    """``first -> last`` lines of the sampled training rates (mean over the first / last RL steps)."""
    lines = [f"  (train: sampled rollouts, mean over {label})"]
    for key, name in TREND_KEYS:
        if key in first and key in last:
            lines.append(f"  {'sampled ' + name:<25}: {_num(first[key])} -> {_num(last[key])}")
    return lines if len(lines) > 1 else []


def dashboard_command(output_dir: Path) -> str:
    """The command line that draws this run's curves (PNGs + one HTML page under <run>/dashboard)."""
    run = shlex.quote(str(output_dir))
    return f"python -m metis.dashboard {run} --out {shlex.quote(str(output_dir / 'dashboard'))}"
