"""A saved W&B workspace with the dashboard's panels (``wandb-workspaces``), for runs on a server.

Each panel plots ``train/<metric>`` against ``train/rl_step`` (sampled rollouts) or ``val/<metric>``
against ``val/rl_step`` (greedy validation, 0 = before training); the runs of a W&B
group are grouped by a config key (the reward scheme by default), drawn as the group mean with a
standard-error band (W&B offers no 95 % interval; the PNG dashboard draws that).
"""

from __future__ import annotations

from metis.dashboard.callbacks import STEP_METRIC, STEP_OF
from metis.dashboard.panels import SECTIONS


def build_workspace(entity: str, project: str, group: str | None = None, group_key: str = "reward.name",
                    name: str | None = None):
    """The workspace object (nothing is sent until ``.save()``)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = []
    for i, section in enumerate(SECTIONS):
        panels = [
            wr.LinePlot(title=f"{p.title} ({split})", x=STEP_OF[f"{split}/"], y=[f"{split}/{p.metric}"],
                        groupby=wr.Config(group_key), groupby_aggfunc="mean", groupby_rangefunc="stderr",
                        range_y=(0, 1) if p.unit_range else (None, None), title_x="RL step")
            for p in section.panels for split in ("train", "val")]
        sections.append(ws.Section(name=section.name, panels=panels, is_open=i < 2,
                                   panel_settings=ws.SectionPanelSettings(x_axis=STEP_METRIC)))
    filters = [ws.Metric("Group") == group] if group else []
    return ws.Workspace(
        entity=entity, project=project,
        name=name or f"Metis curves{f': {group}' if group else ''}",
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=STEP_METRIC, max_runs=100),
        runset_settings=ws.RunsetSettings(filters=filters, groupby=[ws.Config(group_key)]),
    )


def parse_project(value: str) -> tuple[str, str]:
    """``entity/project`` -> ``(entity, project)``; a clear error otherwise."""
    entity, sep, project = value.partition("/")
    if not sep or not entity or not project or "/" in project:
        raise ValueError(f"--wandb takes <entity>/<project>, got {value!r}")
    return entity, project
