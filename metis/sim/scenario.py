"""Scenarios of the scheme simulator: who is asked what, and how often a given number of tool
calls leads to a right answer.

A scenario is a set of *units* (item classes, or single items of a pool). Unit k is drawn with
probability `weights[k]`, carries a ground-truth flag `needs_tool[k]`, belongs to one reporting
class (`class_names[unit_class[k]]`) and has a success table `p[k, T]` = P(right answer | T tool
calls), T in {0, ..., t_max}. The tabular policy has one row of logits per unit (`policy:
per_item`) or one per reporting class (`policy: per_class`: items of a class share a row, i.e. the
model cannot tell them apart).

Deliberate simplifications:
- success depends on the item and the *number* of calls only, not on which tool or what the call
  did; every call is equally useful, and T is chosen up front (no sequential decision);
- skill growth (`ramp`) is exogenous: p moves linearly from `p` to `p_final` between two training
  steps, whatever the policy does (it is not learnt from practice);
- `fmt_fail_rate` draws r_fmt = 0 independently of the answer and of T;
- a pool item "needs a tool" when its group says so (`needs_tool` of the group), not by a
  threshold on its own p.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

POLICIES = ("per_class", "per_item")


def _pad(name: str, values: Sequence[float], t_max: int) -> list[float]:
    vals = [float(v) for v in values]
    if not vals or len(vals) > t_max + 1:
        raise ValueError(f"{name}: need 1 to t_max + 1 = {t_max + 1} success probabilities, got {vals}")
    if any(not 0.0 <= v <= 1.0 for v in vals):
        raise ValueError(f"{name}: success probabilities must lie in [0, 1], got {vals}")
    return vals + [vals[-1]] * (t_max + 1 - len(vals))


@dataclass
class Scenario:
    """Units, their sampling weights, tool necessity and success tables (see module docstring)."""

    name: str
    t_max: int
    class_names: list[str]
    unit_class: Tensor      # [K] long, index into class_names
    weights: Tensor         # [K] float64, sums to 1
    needs_tool: Tensor      # [K] bool
    p_start: Tensor         # [K, t_max + 1] float64
    p_final: Tensor         # [K, t_max + 1] float64 (== p_start without skill growth)
    ramp: tuple[int, int] | None
    policy_row: Tensor      # [K] long, the logits row each unit uses
    num_rows: int
    fmt_fail_rate: float = 0.0

    @property
    def num_units(self) -> int:
        return int(self.weights.numel())

    def success(self, step: int) -> Tensor:
        """p[k, T] at training step `step` (after `step` updates), linear between the ramp ends."""
        if self.ramp is None:
            return self.p_start
        a, b = self.ramp
        frac = 1.0 if step >= b else 0.0 if step <= a else (step - a) / max(b - a, 1)
        return self.p_start + frac * (self.p_final - self.p_start)

    def optimal_accuracy(self, step: int) -> float:
        """Accuracy of the best policy (per unit, argmax_T p) at `step`."""
        return float((self.success(step).max(dim=-1).values * self.weights).sum())

    def class_needs_tool(self) -> list[bool | None]:
        """Per reporting class: True/False when all its units agree, None when mixed."""
        out: list[bool | None] = []
        for c in range(len(self.class_names)):
            flags = self.needs_tool[self.unit_class == c]
            out.append(bool(flags[0]) if bool((flags == flags[0]).all()) else None)
        return out


def _from_classes(cfg: Mapping[str, Any], t_max: int) -> dict[str, Any]:
    classes = cfg.get("classes") or []
    if not classes:
        raise ValueError("scenario kind 'classes' needs a non-empty 'classes' list")
    names, weights, needs, p0, p1 = [], [], [], [], []
    for i, c in enumerate(classes):
        name = str(c.get("name", f"class{i}"))
        w = float(c.get("weight", 1.0))
        if w <= 0:
            raise ValueError(f"class {name!r}: weight must be > 0, got {w}")
        if "needs_tool" not in c or not isinstance(c["needs_tool"], bool):
            raise ValueError(f"class {name!r}: 'needs_tool' must be true or false")
        names.append(name)
        weights.append(w)
        needs.append(c["needs_tool"])
        p0.append(_pad(f"class {name!r} p", c["p"], t_max))
        p1.append(_pad(f"class {name!r} p_final", c["p_final"], t_max) if c.get("p_final") is not None else p0[-1])
    k = len(names)
    return dict(class_names=names, unit_class=torch.arange(k), weights=torch.tensor(weights, dtype=torch.float64),
                needs_tool=torch.tensor(needs), p_start=torch.tensor(p0, dtype=torch.float64),
                p_final=torch.tensor(p1, dtype=torch.float64))


def _from_pool(cfg: Mapping[str, Any], t_max: int) -> dict[str, Any]:
    """Items drawn once (generator seeded by pool.seed, the same for every training seed).

    Per item of a group: p0 ~ U(p0 range), gain ~ U(tool_gain range), p(1) = p0 + gain * (1 - p0),
    p(T >= 2) = min(1, p(1) + extra_per_call * (T - 1)).
    """
    pool = cfg.get("pool") or {}
    n = int(pool.get("num_items", 0))
    groups = pool.get("groups") or []
    if n <= 0 or not groups:
        raise ValueError("scenario kind 'pool' needs pool.num_items > 0 and a non-empty pool.groups list")
    gen = torch.Generator().manual_seed(int(pool.get("seed", 0)))
    fracs = torch.tensor([float(g.get("frac", 1.0)) for g in groups], dtype=torch.float64)
    counts = torch.floor(fracs / fracs.sum() * n).long()
    counts[0] += n - int(counts.sum())
    names, cls, needs, table = [], [], [], []
    t = torch.arange(t_max + 1, dtype=torch.float64)
    for gi, (g, m) in enumerate(zip(groups, counts.tolist())):
        names.append(str(g.get("name", f"group{gi}")))
        lo, hi = (float(v) for v in g.get("p0", (0.0, 1.0)))
        glo, ghi = (float(v) for v in g.get("tool_gain", (0.0, 0.0)))
        extra = float(g.get("extra_per_call", 0.0))
        if not (0 <= lo <= hi <= 1 and 0 <= glo <= ghi <= 1):
            raise ValueError(f"pool group {names[-1]!r}: ranges must satisfy 0 <= lo <= hi <= 1")
        p0 = lo + (hi - lo) * torch.rand(m, generator=gen, dtype=torch.float64)
        gain = glo + (ghi - glo) * torch.rand(m, generator=gen, dtype=torch.float64)
        p1 = p0 + gain * (1 - p0)
        pt = torch.where(t == 0, p0[:, None], (p1[:, None] + extra * (t - 1).clamp(min=0)).clamp(max=1.0))
        table.append(pt)
        cls += [gi] * m
        needs += [bool(g.get("needs_tool", False))] * m
    p = torch.cat(table)
    return dict(class_names=names, unit_class=torch.tensor(cls), weights=torch.full((n,), 1.0 / n, dtype=torch.float64),
                needs_tool=torch.tensor(needs), p_start=p, p_final=p.clone())


def build_scenario(cfg: Mapping[str, Any]) -> Scenario:
    """A Scenario from a `conf/sim/*.yaml` mapping (see those files for the keys)."""
    t_max = int(cfg.get("t_max", 4))
    if t_max < 1:
        raise ValueError(f"t_max must be >= 1, got {t_max}")
    kind = cfg.get("kind", "classes")
    if kind == "classes":
        parts = _from_classes(cfg, t_max)
    elif kind == "pool":
        parts = _from_pool(cfg, t_max)
    else:
        raise ValueError(f"scenario 'kind' must be 'classes' or 'pool', got {kind!r}")
    policy = cfg.get("policy", "per_class")
    if policy not in POLICIES:
        raise ValueError(f"scenario 'policy' must be one of {POLICIES}, got {policy!r}")
    k = int(parts["weights"].numel())
    if policy == "per_item":
        row, rows = torch.arange(k), k
    else:
        row, rows = parts["unit_class"].clone(), len(parts["class_names"])
    ramp = cfg.get("ramp")
    if ramp is not None:
        ramp = (int(ramp[0]), int(ramp[1]))
        if ramp[1] < ramp[0]:
            raise ValueError(f"ramp must be [from_step, to_step] with from <= to, got {list(ramp)}")
    fmt = float(cfg.get("fmt_fail_rate", 0.0))
    if not 0.0 <= fmt < 1.0:
        raise ValueError(f"fmt_fail_rate must lie in [0, 1), got {fmt}")
    w = parts.pop("weights")
    return Scenario(name=str(cfg.get("name", "scenario")), t_max=t_max, weights=w / w.sum(), ramp=ramp,
                    policy_row=row, num_rows=rows, fmt_fail_rate=fmt, **parts)
