"""Tables, CSV curves, plots and W&B logging of simulator runs.

Summary per scheme (mean ± std over seeds):
- final exact metrics (policy after the last update): accuracy, unnecessary / necessary tool-call
  rate, mean T, per-class accuracy, tool rate and mean T;
- rho_Q: the *sampled* batch value averaged over the first and over the last `tail` updates;
- `step_unnec<thr`: the first step at which the exact unnecessary-tool rate is < `threshold`,
  over the seeds that reach it (`reached` counts them; the others are left out of the mean);
- `peak_rho_Q`, `t_peak_rho_Q`: the maximum of the `smooth`-step moving average of rho_Q and its step;
- `t50_acc`, `t50_rho_Q`: the first step at which the metric has covered half of its rise from its
  start (rho_Q: mean of updates 1..`smooth`, searched from step `smooth` on) to its maximum (after a `smooth`-step moving average);
  NaN when it never rises by more than 0.05. t50_rho_Q > t50_acc reads "efficiency after accuracy".

Deliberate simplifications: the curriculum lag is a crude t50 comparison, not a cross-correlation.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from metis.sim.engine import History

MAIN_CURVES = (("accuracy", "accuracy (exact)"),
               ("unnecessary_tool_rate", "unnecessary tool-call rate (exact)"),
               ("necessary_tool_rate", "necessary tool-call rate (exact)"),
               ("rho_Q", "rho_Q (sampled batch, moving avg)"))
CURVE_CSV_METRICS = ("accuracy", "unnecessary_tool_rate", "necessary_tool_rate", "tool_call_rate", "mean_T", "rho_Q")


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along axis 0 that ignores NaN (same length as x)."""
    if window <= 1:
        return x
    v = np.nan_to_num(x, nan=0.0)
    n = (~np.isnan(x)).astype(np.float64)
    cs, cn = np.cumsum(v, axis=0), np.cumsum(n, axis=0)
    cs[window:] = cs[window:] - cs[:-window]
    cn[window:] = cn[window:] - cn[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cn > 0, cs / np.maximum(cn, 1), np.nan)


def first_step_below(x: np.ndarray, thr: float) -> np.ndarray:
    """Per seed (column): first row with x < thr, NaN if never."""
    hit = x < thr
    return np.where(hit.any(axis=0), hit.argmax(axis=0), np.nan).astype(np.float64)


def t_half_rise(x: np.ndarray, smooth: int, start_window: int | None = None) -> np.ndarray:
    """Per seed: first step at which the smoothed curve covers half its rise from start to max."""
    xs = moving_average(x, smooth)
    first = 0
    if start_window:  # sampled metric: start = mean of updates 1..w, search from there on
        first = start_window
        x0 = np.nanmean(x[1:1 + start_window], axis=0)
    else:
        x0 = x[0]
    out = np.full(x.shape[1], np.nan)
    if first >= x.shape[0] or np.isnan(xs[first:]).all():
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        peak = np.nanmax(xs[first:], axis=0)
    for s in range(x.shape[1]):
        if peak[s] - x0[s] > 0.05:
            out[s] = float(first + np.argmax(xs[first:, s] >= x0[s] + 0.5 * (peak[s] - x0[s])))
    return out


def _ms(v: np.ndarray) -> tuple[float, float]:
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=0))


def summarize(histories: Sequence[History], threshold: float = 0.1, tail: int = 10, smooth: int = 10) -> pd.DataFrame:
    """One row per scheme; numeric columns `<metric>` (mean) and `<metric>_std`."""
    rows = []
    with warnings.catch_warnings():  # all-NaN columns (a seed without a sampled value) give NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        for h in histories:
            rows.append(_summary_row(h, threshold, tail, smooth))
    return pd.DataFrame(rows)


def _summary_row(h: History, threshold: float, tail: int, smooth: int) -> dict[str, Any]:
    m = h.metrics
    row: dict[str, Any] = {"scheme": h.label, "seeds": len(h.seeds), "steps": m["accuracy"].shape[0] - 1}
    final_keys = [k for k in m if k not in ("rho_Q", "frac_reward_zero_std", "efficiency_active_groups",
                                            "frac_correct", "mean_tool_calls")]
    for k in final_keys:
        row[k], row[f"{k}_std"] = _ms(m[k][-1])
    row["rho_Q_first"], row["rho_Q_first_std"] = _ms(np.nanmean(m["rho_Q"][1:1 + tail], axis=0))
    row["rho_Q"], row["rho_Q_std"] = _ms(np.nanmean(m["rho_Q"][-tail:], axis=0))
    row["frac_reward_zero_std"], row["frac_reward_zero_std_std"] = _ms(np.nanmean(m["frac_reward_zero_std"][-tail:], axis=0))
    below = first_step_below(m["unnecessary_tool_rate"], threshold)
    row["step_unnec_below"], row["step_unnec_below_std"] = _ms(below)
    row["reached"] = int((~np.isnan(below)).sum())
    row["t50_acc"], row["t50_acc_std"] = _ms(t_half_rise(m["accuracy"], smooth))
    row["t50_rho_Q"], row["t50_rho_Q_std"] = _ms(t_half_rise(m["rho_Q"], smooth, start_window=smooth))
    rq = moving_average(m["rho_Q"], smooth)
    peak = np.where(np.isnan(rq).all(axis=0), np.nan, np.nanargmax(np.nan_to_num(rq, nan=-1.0), axis=0))
    row["peak_rho_Q"], row["peak_rho_Q_std"] = _ms(np.nanmax(rq, axis=0))
    row["t_peak_rho_Q"], row["t_peak_rho_Q_std"] = _ms(peak.astype(np.float64))
    row["optimal_accuracy"] = h.optimal_accuracy
    return row


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Mean over seeds per step; NaN (no warning) where every seed is NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=1)


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(df: pd.DataFrame, threshold: float = 0.1, class_cols: bool = True) -> str:
    """The main table: final metrics mean ± std over seeds, plus the step columns."""
    thr = f"{threshold:g}"
    header = ["scheme", "accuracy", "unnecessary tool rate", "necessary tool rate", "mean T",
              "rho_Q first/peak/last", f"step unnec < {thr} (reached)", "t50 acc", "t50 rho_Q", "t peak rho_Q"]
    classes = [c[len("mean_T/"):] for c in df.columns if c.startswith("mean_T/") and not c.endswith("_std")]
    if class_cols:
        header += [f"mean T {c}" for c in classes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in df.iterrows():
        step = "never" if r["reached"] == 0 else f"{r['step_unnec_below']:.0f} ± {r['step_unnec_below_std']:.0f} ({r['reached']}/{r['seeds']})"
        cells = [f"`{r['scheme']}`", _pm(r["accuracy"], r["accuracy_std"]),
                 _pm(r["unnecessary_tool_rate"], r["unnecessary_tool_rate_std"]),
                 _pm(r["necessary_tool_rate"], r["necessary_tool_rate_std"]), _pm(r["mean_T"], r["mean_T_std"], 2),
                 f"{r['rho_Q_first']:.2f} / {r['peak_rho_Q']:.2f} / {r['rho_Q']:.2f}", step,
                 "–" if math.isnan(r["t50_acc"]) else f"{r['t50_acc']:.0f}",
                 "–" if math.isnan(r["t50_rho_Q"]) else f"{r['t50_rho_Q']:.0f}",
                 "–" if r["peak_rho_Q"] == 0 or math.isnan(r["t_peak_rho_Q"]) else f"{r['t_peak_rho_Q']:.0f}"]
        if class_cols:
            cells += [_pm(r[f"mean_T/{c}"], r[f"mean_T/{c}_std"], 2) for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_frame(histories: Sequence[History], metrics: Sequence[str] = CURVE_CSV_METRICS,
                 per_seed: bool = False) -> pd.DataFrame:
    """Long-by-step frame: scheme, step[, seed], one column per metric (seed mean unless per_seed)."""
    frames = []
    for h in histories:
        steps = np.arange(h.metrics["accuracy"].shape[0])
        if per_seed:
            for j, s in enumerate(h.seeds):
                d = {"scheme": h.label, "seed": s, "step": steps}
                d.update({k: v[:, j] for k, v in h.metrics.items()})
                frames.append(pd.DataFrame(d))
        else:
            d = {"scheme": h.label, "step": steps}
            d.update({k: _nanmean_rows(h.metrics[k]) for k in metrics})
            frames.append(pd.DataFrame(d))
    return pd.concat(frames, ignore_index=True)


def plot_curves(histories: Sequence[History], path: Path, title: str = "", smooth: int = 10) -> Path:
    """2 x 2 PNG of the four main curves, one line per scheme (mean over seeds, ± std band)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 7.5), sharex=True)
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors)
    bases = list(dict.fromkeys(h.label.split("(")[0] for h in histories))
    seen: dict[str, int] = {}
    for h in histories:
        base = h.label.split("(")[0]
        color = palette[bases.index(base) % len(palette)]
        style = ("-", "--", ":", "-.")[seen.get(base, 0) % 4]  # variants of a scheme: same colour, new dash
        seen[base] = seen.get(base, 0) + 1
        for ax, (key, name) in zip(axes.flat, MAIN_CURVES):
            x = h.metrics[key]
            if key == "rho_Q":
                x = moving_average(x, smooth)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mu, sd = np.nanmean(x, axis=1), np.nanstd(x, axis=1)
            steps = np.arange(x.shape[0])
            ax.plot(steps, mu, color=color, ls=style, lw=1.5, label=h.label)
            ax.fill_between(steps, mu - sd, mu + sd, color=color, alpha=0.12, lw=0)
            ax.set_title(name if key != "rho_Q" else f"{name} ({smooth} steps)", fontsize=10)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
    if histories and not math.isnan(histories[0].optimal_accuracy):
        axes[0, 0].axhline(histories[0].optimal_accuracy, color="k", ls=":", lw=1, label="best policy (final p)")
    for ax in axes[1]:
        ax.set_xlabel("update step")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    n = len(histories[0].seeds) if histories else 0
    fig.suptitle(f"{title}  (mean ± std over {n} seeds)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(histories: Sequence[History], out_dir: Path, title: str, threshold: float = 0.1,
                 tail: int = 10, smooth: int = 10, plots: bool = True, per_seed_csv: bool = True) -> pd.DataFrame:
    """summary.csv, summary.md, curves.csv (seed means), curves_per_seed.csv, curves.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = summarize(histories, threshold, tail, smooth)
    df.to_csv(out_dir / "summary.csv", index=False, float_format="%.5g")
    md = markdown_table(df, threshold)
    opt = histories[0].optimal_accuracy if histories else math.nan
    (out_dir / "summary.md").write_text(f"## {title}\n\nbest-policy accuracy: {opt:.3f}\n\n{md}\n")
    curves_frame(histories).to_csv(out_dir / "curves.csv", index=False, float_format="%.4g")
    if per_seed_csv:
        curves_frame(histories, per_seed=True).to_csv(out_dir / "curves_per_seed.csv", index=False, float_format="%.4g")
    if plots:
        plot_curves(histories, out_dir / "curves.png", title, smooth)
    return df


def log_to_wandb(histories: Sequence[History], make_logger: Callable[[str], Any], summary: pd.DataFrame,
                 hparams: dict[str, Any], image: Path | None = None) -> None:
    """One logger run per scheme: seed-mean (and std) of every metric per step, the summary row.

    `make_logger(label)` returns a Lightning logger (conf/logger/*.yaml, e.g. offline WandbLogger).
    """
    for h in histories:
        lg = make_logger(h.label)
        lg.log_hyperparams({**hparams, "scheme": h.label})
        for t in range(h.metrics["accuracy"].shape[0]):
            row: dict[str, float] = {}
            for k, v in h.metrics.items():
                if not np.isnan(v[t]).all():
                    row[f"sim/{k}"] = float(np.nanmean(v[t]))
                    row[f"sim/{k}_std"] = float(np.nanstd(v[t]))
            lg.log_metrics(row, step=t)
        exp = getattr(lg, "experiment", None)
        if exp is not None and hasattr(exp, "summary"):
            srow = summary[summary["scheme"] == h.label].iloc[0].to_dict()
            for k, v in srow.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    exp.summary[f"final/{k}"] = v
            if image is not None and image.exists():
                import wandb

                exp.log({"sim/curves": wandb.Image(str(image))})
        lg.finalize("success")
        if exp is not None and hasattr(exp, "finish"):
            exp.finish()
