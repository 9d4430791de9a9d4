"""The paper's three claims as pre-stated contrasts, decided from per-run files.

Each claim is a contrast with a threshold and a test, fixed before any RL run (the thresholds
below are the ones stated in ``experiments/miniature/DECISION_RULES.md``; change both together,
and only before a run). A verdict is ``holds``, ``refuted`` or ``inconclusive``:

- claim 1, large-alpha coupled drops needed calls: HDPO minus coupled(alpha large), paired by
  seed, on the necessary-call rate (>= 0.30) and on tool-needed accuracy (>= 0.15);
- claim 2, small-alpha coupled keeps unneeded calls: coupled(alpha small) minus HDPO on the
  unnecessary-call rate (>= 0.30);
- claim 3, the curriculum: in HDPO runs the step where sampled accuracy has risen halfway comes
  before the step where unneeded calls have fallen halfway (per-seed difference < 0), and before
  its peak rho_Q rises with accuracy (Spearman > 0).

``holds``: every point estimate reaches its threshold and every Holm-adjusted one-sided p-value
is below ``alpha``. ``refuted``: some interval lies wholly on the wrong side of its threshold
(the data exclude an effect of the stated size, or show the opposite order). Otherwise
``inconclusive``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from metis.analysis.stats import (Interval, halfway_step, holm, one_sample, paired_difference, spearman,
                                  t_interval)
from metis.rl.advantages import hdpo_advantages

THRESHOLDS = {"claim1_necessary_rate": 0.30, "claim1_needed_accuracy": 0.15, "claim2_unnecessary_rate": 0.30}
ALPHA = 0.05


@dataclass
class Run:
    """One RL run: its arm, seed, final held-out metrics and per-step training curves."""

    arm: str
    seed: int
    final: dict[str, float]
    curves: dict[str, list[float]] = field(default_factory=dict)  # "step", "accuracy", "unnecessary_tool_rate", "rho_Q"


@dataclass
class Contrast:
    name: str
    interval: Interval
    p: float
    threshold: float | None = None
    p_holm: float = float("nan")
    per_seed: dict[int, float] = field(default_factory=dict)  # the values the interval was computed from

    def as_dict(self) -> dict:
        return {"name": self.name, **self.interval.as_dict(), "p": self.p, "p_holm": self.p_holm,
                "threshold": self.threshold, "per_seed": {str(k): v for k, v in self.per_seed.items()}}


def _by_seed(runs: Sequence[Run], arm: str, key: str) -> dict[int, float]:
    return {r.seed: float(r.final[key]) for r in runs if r.arm == arm and key in r.final}


def _curriculum_per_seed(run: Run) -> tuple[float, float]:
    """(halfway(accuracy) - halfway(unneeded rate), Spearman(rho_Q, accuracy) up to rho_Q's peak)."""
    c = run.curves
    steps, acc, unn, rho = c.get("step", []), c.get("accuracy", []), c.get("unnecessary_tool_rate", []), c.get("rho_Q", [])
    d = halfway_step(steps, acc) - halfway_step(steps, unn) if steps else float("nan")
    corr = float("nan")
    if rho:
        peak = int(np.argmax(np.asarray(rho)))
        corr = spearman(acc[: peak + 1], rho[: peak + 1])
    return d, corr


def _one_sided(values: Sequence[float], sign: float) -> tuple[Interval, float]:
    """t-interval of ``values`` and the one-sided p-value of ``sign * mean > 0``."""
    vals = [v for v in values if not math.isnan(v)]
    _, p = one_sample([sign * v for v in vals])
    return t_interval(vals), p


def _paired(hdpo: str, coupled_large: str, coupled_small: str) -> tuple[tuple[str, str, str, str], ...]:
    """The paired primary contrasts (claims 1, 2): name, arm minus arm, final metric."""
    return (("claim1_necessary_rate", hdpo, coupled_large, "necessary_tool_rate"),
            ("claim1_needed_accuracy", hdpo, coupled_large, "accuracy_tool_needed"),
            ("claim2_unnecessary_rate", coupled_small, hdpo, "unnecessary_tool_rate"))


def per_seed_values(runs: Sequence[Run], hdpo: str, coupled_large: str, coupled_small: str) -> dict[str, dict[int, float]]:
    """The values behind each primary contrast, per seed: paired differences (claims 1, 2) and HDPO's
    per-seed curriculum statistics (claim 3)."""
    out: dict[str, dict[int, float]] = {}
    for name, a, b, key in _paired(hdpo, coupled_large, coupled_small):
        xa, xb = _by_seed(runs, a, key), _by_seed(runs, b, key)
        out[name] = {s: xa[s] - xb[s] for s in sorted(set(xa) & set(xb))}
    per_seed = {r.seed: _curriculum_per_seed(r) for r in runs if r.arm == hdpo}
    out["claim3_order"] = {s: d for s, (d, _) in sorted(per_seed.items())}
    out["claim3_rhoQ_tracks_accuracy"] = {s: c for s, (_, c) in sorted(per_seed.items())}
    return out


def contrasts(runs: Sequence[Run], hdpo: str, coupled_large: str, coupled_small: str) -> dict[str, Contrast]:
    """The five primary contrasts, Holm-adjusted together, each with its per-seed values."""
    seeds = per_seed_values(runs, hdpo, coupled_large, coupled_small)
    out: dict[str, Contrast] = {}
    for name, a, b, key in _paired(hdpo, coupled_large, coupled_small):
        ci, p = paired_difference(_by_seed(runs, a, key), _by_seed(runs, b, key))
        out[name] = Contrast(name, ci, p, THRESHOLDS[name], per_seed=seeds[name])
    ci, p = _one_sided(list(seeds["claim3_order"].values()), -1.0)  # accuracy first: difference < 0
    out["claim3_order"] = Contrast("claim3_order", ci, p, 0.0, per_seed=seeds["claim3_order"])
    ci, p = _one_sided(list(seeds["claim3_rhoQ_tracks_accuracy"].values()), 1.0)
    out["claim3_rhoQ_tracks_accuracy"] = Contrast("claim3_rhoQ_tracks_accuracy", ci, p, 0.0,
                                                  per_seed=seeds["claim3_rhoQ_tracks_accuracy"])
    for k, v in holm({k: c.p for k, c in out.items()}).items():
        out[k].p_holm = v
    return out


def _verdict(parts: Sequence[Contrast], direction: Sequence[float]) -> str:
    """``direction`` +1: the claim predicts a value >= threshold; -1: a value < threshold (claim 3 order)."""
    holds = all(not math.isnan(c.p_holm) and c.p_holm < ALPHA and d * (c.interval.mean - c.threshold) >= 0
                for c, d in zip(parts, direction))
    if holds:
        return "holds"
    refuted = any((c.interval.hi < c.threshold) if d > 0 else (c.interval.lo > c.threshold)
                  for c, d in zip(parts, direction) if c.interval.n >= 2)
    return "refuted" if refuted else "inconclusive"


def verdicts(runs: Sequence[Run], hdpo: str, coupled_large: str, coupled_small: str) -> dict[str, dict]:
    """Verdict and contrasts of each claim (plain types, ready for JSON)."""
    cs = contrasts(runs, hdpo, coupled_large, coupled_small)
    spec = {
        "claim1": ((cs["claim1_necessary_rate"], cs["claim1_needed_accuracy"]), (1, 1)),
        "claim2": ((cs["claim2_unnecessary_rate"],), (1,)),
        "claim3": ((cs["claim3_order"], cs["claim3_rhoQ_tracks_accuracy"]), (-1, 1)),
    }
    return {name: {"verdict": _verdict(parts, dirs), "contrasts": [c.as_dict() for c in parts]}
            for name, (parts, dirs) in spec.items()}


def shadow_rho_q(records: Sequence[Mapping], ans_weight: float = 0.9, fmt_weight: float = 0.1) -> dict[int, float]:
    """HDPO's rho_Q computed on any arm's rollouts, per RL step.

    ``records`` are rows of ``rollouts/train.jsonl`` (``rl_step``, ``group_id``, ``r_ans``,
    ``r_fmt``, ``num_tool_calls``). The efficiency advantages are HDPO's (GRPO on 1/(T+1) over the
    correct rollouts of each group), whatever scheme trained the run: comparing this between arms
    separates the mechanical link "more correct rollouts -> more non-zero efficiency advantages"
    from what HDPO's own updates do."""
    steps: dict[int, list[Mapping]] = {}
    for r in records:
        steps.setdefault(int(r["rl_step"]), []).append(r)
    out = {}
    for step, rows in sorted(steps.items()):
        r_ans = torch.tensor([float(r["r_ans"]) for r in rows], dtype=torch.float64)
        r_fmt = torch.tensor([float(r.get("r_fmt", 1.0)) for r in rows], dtype=torch.float64)
        calls = torch.tensor([int(r["num_tool_calls"]) for r in rows], dtype=torch.float64)
        correct = r_ans > 0
        r_tool = torch.where(correct, 1.0 / (calls + 1.0), torch.zeros_like(calls))
        groups = torch.tensor([int(r["group_id"]) for r in rows], dtype=torch.long)
        _, tool = hdpo_advantages(ans_weight * r_ans + fmt_weight * r_fmt, r_tool, correct, groups)
        out[step] = float((tool != 0).double().mean())
    return out
