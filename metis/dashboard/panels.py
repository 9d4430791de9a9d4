"""The dashboard's panels: one list drawn both as PNGs and as a W&B workspace."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Panel:
    """One plot: ``metric`` logged as ``train/<metric>`` (sampled rollouts, every RL step) and, where
    the run validates, ``val/<metric>`` (greedy, every ``val_check_interval`` steps)."""

    metric: str
    title: str
    unit_range: bool = True  # a rate or accuracy: y in [0, 1]


@dataclass(frozen=True)
class Section:
    name: str
    panels: tuple[Panel, ...]


SECTIONS = (
    Section("accuracy", (
        Panel("accuracy", "accuracy"),
        Panel("accuracy_tool_needed", "accuracy, tool needed"),
        Panel("accuracy_tool_unneeded", "accuracy, tool unneeded"),
    )),
    Section("tool use", (
        Panel("tool_call_rate", "tool-call rate"),
        Panel("unnecessary_tool_rate", "unnecessary tool rate (tool unneeded)"),
        Panel("necessary_tool_rate", "necessary tool rate (tool needed)"),
        Panel("mean_tool_calls", "mean tool calls", unit_range=False),
    )),
    Section("efficiency channel", (
        Panel("rho_Q", "rho_Q (rollouts with A_tool != 0)"),
        Panel("efficiency_active_groups", "efficiency-active groups", unit_range=False),
    )),
    Section("losses", (
        Panel("loss/acc", "loss, accuracy term", unit_range=False),
        Panel("loss/tool", "loss, tool term", unit_range=False),
        Panel("grad_cosine/acc_vs_tool", "gradient cosine, acc vs tool", unit_range=False),
    )),
)
SOURCE_METRICS = ("accuracy", "tool_call_rate", "unnecessary_tool_rate")
_SOURCE = re.compile(r"^(?:train|val)/source/([^/]+)/(.+)$")


def source_section(keys: set[str]) -> Section | None:
    """Per data source (``train/source/<name>/<metric>``), where the run logs them."""
    names = sorted({m.group(1) for k in keys if (m := _SOURCE.match(k)) and m.group(2) in SOURCE_METRICS})
    if not names:
        return None
    return Section("per data source", tuple(
        Panel(f"source/{name}/{metric}", f"{name}: {metric.replace('_', ' ')}")
        for name in names for metric in SOURCE_METRICS
        if f"train/source/{name}/{metric}" in keys or f"val/source/{name}/{metric}" in keys))


def sections_for(keys: set[str]) -> list[Section]:
    """The sections with at least one panel the runs logged (panels they did not log are dropped)."""
    out = []
    for section in (*SECTIONS, source_section(keys)):
        if section is None:
            continue
        panels = tuple(p for p in section.panels if f"train/{p.metric}" in keys or f"val/{p.metric}" in keys)
        if panels:
            out.append(Section(section.name, panels))
    return out
