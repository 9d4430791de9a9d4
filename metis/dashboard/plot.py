"""Seed means with 95 % bands over RL steps: PNGs per section and one self-contained HTML page."""

from __future__ import annotations

import base64
import csv
import html
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from metis.dashboard.panels import Section
from metis.dashboard.runs import RunData

# Student t, two-sided 95 %, by degrees of freedom 1..30 (then the normal 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
SUMMARY_METRICS = ("accuracy", "accuracy_tool_needed", "accuracy_tool_unneeded", "unnecessary_tool_rate",
                   "necessary_tool_rate", "mean_tool_calls")


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (0 for a single value)."""
    if not values:
        return float("nan"), float("nan")
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, t975(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def smooth(series: dict[float, float], window: int) -> dict[float, float]:
    """Trailing moving average over ``window`` logged steps (1 = as logged)."""
    if window <= 1:
        return series
    steps = sorted(series)
    return {s: statistics.fmean(series[t] for t in steps[max(0, i - window + 1):i + 1]) for i, s in enumerate(steps)}


@dataclass
class Curve:
    steps: list[float]
    mean: list[float]
    half: list[float]   # 95 % half-width
    n: list[int]        # runs with a value at that step


def aggregate(runs: list[RunData], key: str, window: int = 1) -> Curve:
    """Per RL step, the mean over the runs that logged ``key`` there and its 95 % interval."""
    by_step: dict[float, list[float]] = {}
    for run in runs:
        for step, v in smooth(run.series(key), window).items():
            by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    stats = [mean_ci(by_step[s]) for s in steps]
    return Curve(steps, [m for m, _ in stats], [h for _, h in stats], [len(by_step[s]) for s in steps])


def last_values(runs: list[RunData], key: str) -> list[float]:
    """Each run's last logged value of ``key``."""
    out = []
    for run in runs:
        series = run.series(key)
        if series:
            out.append(series[max(series)])
    return out


def draw_section(section: Section, groups: dict[str, list[RunData]], path: Path, window: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(section.panels)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.4 * rows + 0.6), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    colors = plt.cm.tab10.colors
    last = max((row["rl_step"] for runs in groups.values() for r in runs for row in r.rows), default=1)
    for ax, panel in zip(axes.flat, section.panels):
        for i, (label, runs) in enumerate(groups.items()):
            color = colors[i % len(colors)]
            for split, style in (("train", dict(ls="-", lw=1.4)), ("val", dict(ls="--", lw=1.2, marker="o", ms=3))):
                c = aggregate(runs, f"{split}/{panel.metric}", window if split == "train" else 1)
                if not c.steps:
                    continue
                ax.plot(c.steps, c.mean, color=color, **style)
                lo = [m - h for m, h in zip(c.mean, c.half)]
                hi = [m + h for m, h in zip(c.mean, c.half)]
                if panel.unit_range:  # a rate cannot leave [0, 1]
                    lo, hi = [max(0.0, x) for x in lo], [min(1.0, x) for x in hi]
                if any(h > 0 for h in c.half):
                    ax.fill_between(c.steps, lo, hi, color=color, alpha=0.15 if split == "train" else 0.08, lw=0)
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel("RL step", fontsize=8)
        ax.set_xlim(-0.02 * last, last * 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if panel.unit_range:
            ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [Line2D([], [], color=colors[i % len(colors)], lw=2,
                      label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
               for i, (label, runs) in enumerate(groups.items())]
    handles += [Line2D([], [], color="k", ls="-", label="train (sampled rollouts)"),
                Line2D([], [], color="k", ls="--", marker="o", ms=3, label="val (greedy)")]
    ncol = min(len(handles), max(2, cols))
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.suptitle(f"{section.name}: seed mean, 95 % band", fontsize=10)
    legend_rows = math.ceil(len(handles) / ncol)
    fig.tight_layout(rect=(0, min(0.45, (0.12 + 0.2 * legend_rows) / fig.get_figheight()), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_rows(groups: dict[str, list[RunData]]) -> list[dict[str, str]]:
    """Per arm: runs, seeds, last RL step and the last validation numbers (mean ± 95 % half-width)."""
    rows = []
    for label, runs in groups.items():
        row = {"arm": label, "runs": str(len(runs)),
               "seeds": " ".join(str(r.seed) for r in runs),
               "rl_steps": " ".join(str(int(max((x["rl_step"] for x in r.rows), default=0))) for r in runs)}
        for metric in SUMMARY_METRICS:
            vals = last_values(runs, f"val/{metric}")
            m, h = mean_ci(vals)
            row[f"val/{metric}"] = "" if not vals else (f"{m:.3f}" if len(vals) < 2 else f"{m:.3f} ± {h:.3f}")
        rows.append(row)
    return rows


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_html(title: str, images: list[tuple[str, Path]], rows: list[dict[str, str]],
               runs: list[RunData], path: Path, command: str) -> None:
    """One page, images embedded (base64): it can be mailed or attached as it is."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;margin:24px;max-width:1500px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
             "img{max-width:100%}code{background:#f3f3f3}</style></head><body>",
             f"<h1>{esc(title)}</h1><p>Drawn by <code>{esc(command)}</code>. Solid: training rollouts "
             "(sampled), every RL step; dashed with dots: validation (greedy) at its steps, step 0 = before "
             "training. Lines are seed means, bands the 95 % t-interval over the runs of an arm.</p>"]
    if rows:
        parts.append("<h2>last validation (mean ± 95 % half-width over runs)</h2><table><tr>"
                     + "".join(f"<th>{esc(k)}</th>" for k in rows[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r.values()) + "</tr>" for r in rows]
        parts.append("</table>")
    for name, png in images:
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h2>{esc(name)}</h2><img alt='{esc(name)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>runs</h2><table><tr><th>arm</th><th>seed</th><th>folder</th></tr>")
    parts += [f"<tr><td>{esc(r.label)}</td><td>{esc(str(r.seed))}</td><td>{esc(str(r.path))}</td></tr>" for r in runs]
    parts.append("</table></body></html>")
    path.write_text("\n".join(parts))

