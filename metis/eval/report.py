"""Evaluation reports: the run's results table, the comparison with the published numbers
(docs/paper.md, "Evaluation"), a summary across runs, and a W&B table of sample trajectories.

``python -m metis.eval.report <runs root> [--out DIR]`` gathers every ``results.json`` under a
folder into one summary table (CSV and markdown).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger("metis.eval")

# Accuracy (%) published for Metis (the HDPO 8B model) and the Qwen3-VL-8B base (docs/paper.md, "Evaluation").
PUBLISHED: dict[str, dict[str, float]] = {
    "vstar": {"Metis": 91.1, "Qwen3-VL-8B": 86.4},
    "hrbench_4k": {"Metis": 83.5, "Qwen3-VL-8B": 78.9},
    "hrbench_8k": {"Metis": 82.0, "Qwen3-VL-8B": 74.6},
    "treebench": {"Metis": 45.2},
    "mme_realworld": {"Metis": 70.3},
    "seed_bench_2_plus": {"Metis": 72.5},
    "charxiv_dq": {"Metis": 83.4},
    "charxiv_rq": {"Metis": 54.1},
    "mathvista": {"Metis": 78.0, "Qwen3-VL-8B": 76.3},
    "mathverse": {"Metis": 65.9},
    "wemath": {"Metis": 65.2, "Qwen3-VL-8B": 38.8},
    "dynamath": {"Metis": 69.2},
    "logicvista": {"Metis": 56.2},
}
# (tool-use rate %, accuracy %) where published; HRBench numbers are the 4K/8K average.
PUBLISHED_TOOL_USE: dict[str, dict[str, tuple[float, float]]] = {
    "vstar": {"Metis": (2, 91.1), "Qwen3-VL-8B + GRPO": (98, 88.7), "DeepEyes": (100, 85.5),
              "DeepEyesV2": (92, 81.8), "Thyme": (26, 83.2)},
    "hrbench_avg": {"Metis": (1, 82.8), "Qwen3-VL-8B + GRPO": (80, 80.1), "DeepEyes": (98, 73.7)},
}
TOOL_USE_KEY = {"vstar": "vstar", "hrbench_4k": "hrbench_avg", "hrbench_8k": "hrbench_avg"}


def _pct(x: Any) -> float:
    return round(100.0 * float(x), 1) if x is not None and not math.isnan(float(x)) else float("nan")


def _is_rate(key: str) -> bool:
    return key.startswith(("accuracy", "tool_use_rate", "hrbench/", "dynamath/", "wemath/", "treebench/")) and \
        key != "wemath/composites" or key in ("unanswered_rate", "tool_error_rate")


def run_flags(results: dict[str, Any]) -> list[str]:
    """Why a number may not be comparable with a published one: a limited run, rows skipped as
    corrupt, rows unscored, generation failures, samples without a prediction, no judge."""
    m, run = results["metrics"], results.get("run") or {}
    flags = []
    if results.get("limit") is not None:
        flags.append(f"limited run (limit={results['limit']})")
    if results.get("skipped_rows"):
        flags.append(f"{results['skipped_rows']} data rows skipped as unusable (accuracy over the rest)")
    if m.get("unscored"):
        flags.append(f"{m['unscored']:.0f} rows unscored (judge unavailable), left out of the accuracy")
    if m.get("runtime_errors"):
        flags.append(f"{m['runtime_errors']:.0f} samples failed to generate (scored unanswered)")
    if run.get("without_prediction"):
        flags.append(f"{run['without_prediction']} samples have no prediction in the file")
    if results.get("truth_source") == "prediction file":
        flags.append("ground truth taken from the prediction file (benchmark data not found)")
    return flags


def to_markdown(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}")
            else:
                cells.append("" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_table(results: dict[str, Any]) -> pd.DataFrame:
    """One row per metric; rates in percent."""
    rows = []
    for key, value in results["metrics"].items():
        rows.append({"metric": key, "value": _pct(value) if _is_rate(key) else float(value),
                     "unit": "%" if _is_rate(key) else "mean" if key.startswith("mean_") else "count"})
    return pd.DataFrame(rows, columns=["metric", "value", "unit"])


def comparison_table(results: dict[str, Any]) -> pd.DataFrame:
    """This run next to the published rows for its benchmark (accuracy and tool-use rate, %)."""
    bench, metrics = results["benchmark"], results["metrics"]
    primary = results.get("primary_metric", "accuracy")
    ours_acc = _pct(metrics.get(primary, metrics.get("accuracy")))
    se = metrics.get(f"{primary}_stderr", metrics.get("accuracy_stderr") if primary == "accuracy" else None)
    flags = results.get("flags") if results.get("flags") is not None else run_flags(results)
    nan = float("nan")
    rows = [{"benchmark": bench, "model": f"this run ({results.get('model', '?')}, tools={results.get('tools', '?')})",
             "accuracy": ours_acc, "stderr": _pct(se), "tool_use_rate": _pct(metrics.get("tool_use_rate")),
             "n": metrics.get("scored", metrics.get("n")), "unscored": metrics.get("unscored", 0.0),
             "source": "measured", "delta_vs_paper_metis": nan, "flags": "; ".join(flags)}]
    paper = PUBLISHED.get(bench, {})
    for model, acc in paper.items():
        rows.append({"benchmark": bench, "model": f"{model} (paper)", "accuracy": acc, "stderr": nan,
                     "tool_use_rate": nan, "n": nan, "unscored": nan, "source": "paper", "delta_vs_paper_metis": nan,
                     "flags": ""})
    tool_key = TOOL_USE_KEY.get(bench)
    for model, (rate, acc) in PUBLISHED_TOOL_USE.get(tool_key, {}).items():
        rows.append({"benchmark": tool_key, "model": f"{model} (paper, tool use)", "accuracy": acc, "stderr": nan,
                     "tool_use_rate": float(rate), "n": nan, "unscored": nan, "source": "paper",
                     "delta_vs_paper_metis": nan, "flags": ""})
    if "Metis" in paper and not math.isnan(ours_acc):
        rows[0]["delta_vs_paper_metis"] = round(ours_acc - paper["Metis"], 1)
    return pd.DataFrame(rows)


def write_reports(output_dir: str | Path, results: dict[str, Any], scored: Sequence[dict[str, Any]]) -> dict[str, Path]:
    """results.json, scores.jsonl, results.{csv,md}, comparison.{csv,md}; returns the paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "scores": out / "scores.jsonl", "table_csv": out / "results.csv",
             "table_md": out / "results.md", "comparison_csv": out / "comparison.csv",
             "comparison_md": out / "comparison.md"}
    paths["results"].write_text(json.dumps(results, indent=2, default=str))
    with paths["scores"].open("w", encoding="utf-8") as fh:
        for rec in scored:
            keep = {k: rec.get(k) for k in ("id", "answer", "final_answer", "score", "verdict_status",
                                            "verdict_method", "verdict_extracted", "verdict_note", "num_tool_calls",
                                            "tool_calls", "num_turns", "truncated", "error")}
            fh.write(json.dumps(keep, ensure_ascii=False, default=str) + "\n")
    table, comp = results_table(results), comparison_table(results)
    table.to_csv(paths["table_csv"], index=False)
    comp.to_csv(paths["comparison_csv"], index=False)
    judge = results.get("judge") or {}
    m = results["metrics"]
    flags = results.get("flags") or []
    head = (f"# {results['benchmark']}: {results.get('model')} (tools={results.get('tools')})\n\n"
            f"{m.get('n', 0):.0f} samples from {results.get('origin')}; {m.get('unscored', 0):.0f} unscored; "
            f"{results.get('skipped_rows', 0)} rows skipped; scoring: rules"
            + (f" + LLM judge {judge.get('model')} at {judge.get('base_url')} (prompt {judge.get('prompt_version')})"
               if judge else " only")
            + "\n\n" + "".join(f"- flag: {f}\n" for f in flags) + ("\n" if flags else ""))
    paths["table_md"].write_text(head + to_markdown(table))
    paths["comparison_md"].write_text(head + to_markdown(comp))
    return paths


def summarize_runs(root: str | Path) -> pd.DataFrame:
    """One row per results.json under ``root``: accuracy, tool use and the paper's numbers."""
    rows = []
    for path in sorted(Path(root).rglob("results.json")):
        try:
            res = json.loads(path.read_text())
            m, bench = res["metrics"], res["benchmark"]
        except (OSError, ValueError, KeyError):
            continue
        rows.append({"benchmark": bench, "model": res.get("model"), "tools": res.get("tools"), "n": m.get("n"),
                     "unscored": m.get("unscored", 0.0),
                     "accuracy": _pct(m.get(res.get("primary_metric", "accuracy"), m.get("accuracy"))),
                     "stderr": _pct(m.get("accuracy_stderr")) if res.get("primary_metric", "accuracy") == "accuracy"
                     else float("nan"), "flags": "; ".join(res.get("flags") or []),
                     "tool_use_rate": _pct(m.get("tool_use_rate")), "mean_tool_calls": m.get("mean_tool_calls"),
                     "paper_metis": PUBLISHED.get(bench, {}).get("Metis", float("nan")),
                     "paper_qwen3_vl_8b": PUBLISHED.get(bench, {}).get("Qwen3-VL-8B", float("nan")),
                     "run_dir": str(path.parent)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- W&B
def log_to_logger(logger, results: dict[str, Any], scored: Sequence[dict[str, Any]], tasks_by_id: dict[str, Any],
                  max_samples: int = 32) -> None:
    """Metrics to any Lightning logger; with a W&B logger also a table of sample trajectories
    (image, question, tool calls, answer, ground truth, verdict). Never raises."""
    if logger is None:
        return
    bench = results["benchmark"]
    try:
        logger.log_metrics({f"eval/{bench}/{k}": float(v) for k, v in results["metrics"].items()
                            if isinstance(v, (int, float)) and not math.isnan(float(v))})
        if hasattr(logger, "save"):
            logger.save()
        experiment = getattr(logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "log") or type(logger).__name__ != "WandbLogger":
            return
        import wandb

        columns = ["id", "image", "question", "tool_calls", "num_tool_calls", "answer", "ground_truth", "verdict",
                   "score", "response"]
        data = []
        for rec in list(scored)[:max_samples]:
            task = tasks_by_id.get(rec["id"])
            image = wandb.Image(task.images[0]) if task is not None and task.images else None
            calls = "; ".join(f"{o.get('tool')}({json.dumps(o.get('arguments'))[:200]})"
                              + (f" -> {o.get('error')}" if o.get("error") else "") for o in rec.get("observations") or [])
            data.append([rec["id"], image, rec.get("question", "")[:2000], calls, rec.get("num_tool_calls", 0),
                         rec.get("final_answer"), str(rec.get("answer")), rec.get("verdict_status"), rec.get("score"),
                         (rec.get("response") or "")[:4000]])
        experiment.log({f"eval/{bench}/samples": wandb.Table(columns=columns, data=data),
                        f"eval/{bench}/comparison": wandb.Table(dataframe=comparison_table(results).astype(str))})
    except Exception as err:  # noqa: BLE001 - reporting must not lose a finished evaluation
        log.warning("could not log evaluation to %s: %s", type(logger).__name__, err)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise every results.json under a folder.")
    parser.add_argument("root")
    parser.add_argument("--out", default=None, help="folder for summary.csv / summary.md (default: root)")
    args = parser.parse_args(argv)
    frame = summarize_runs(args.root)
    out = Path(args.out or args.root)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(to_markdown(frame))
    print(to_markdown(frame))


if __name__ == "__main__":
    main()
