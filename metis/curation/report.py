"""Stage reports: counts in/out, removal reasons with examples, bad input, as markdown, JSON and W&B.

``report.md`` / ``report.json`` go to the stage's folder; the pipeline folder (its parent) gets a
``README.md`` funnel over every stage that has a report. With a logger (``conf/logger``; W&B
offline by default) the counts are logged as ``curate/<stage>/<name>`` and, with W&B, the
examples as a table.

Deliberate simplification: examples are the first ``examples_per_reason`` rows of each reason in
input order (not a random draw).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from metis.data.schema import SKIP_REASONS

log = logging.getLogger("metis.curation")
def _short(details: dict[str, Any], limit: int = 240) -> str:
    keep = details.get("failure") or details.get("detail") or {
        k: v for k, v in details.items() if k in ("pass_rate", "scores", "summary", "failing", "mean_tool_calls")}
    text = keep if isinstance(keep, str) else json.dumps(keep, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_report(stage: Any, source: Any, rows: list[dict[str, Any]], *, status: str, stats: dict[str, Any],
                 message: str | None = None, examples_per_reason: int = 3,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    by_status = Counter(r["status"] for r in rows)
    total = len(source)
    removed: Counter[str] = Counter(r["reason"] for r in rows if r["status"] == "dropped")
    bad: Counter[str] = Counter(r["reason"] for r in rows if r["status"] == "bad_input")
    errors: Counter[str] = Counter(r["reason"] for r in rows if r["status"] == "error")
    examples: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "kept":
            continue
        key = f"{r['status']}:{r['reason']}"
        if len(examples[key]) < examples_per_reason:
            examples[key].append({"id": r["id"], "detail": _short(r.get("details") or {})})
    counts = {"in": total, "finished": by_status["kept"] + by_status["dropped"], "kept": by_status["kept"],
              "removed": by_status["dropped"], "bad_input": by_status["bad_input"], "errors": by_status["error"],
              "pending": total - len(rows)}
    summary = stage.summary(rows) or {}
    return {"stage": stage.name, "status": status, "message": message, "input": str(source.path),
            "layout": source.layout, "counts": counts, "removed_by_reason": dict(sorted(removed.items())),
            "bad_input_by_kind": dict(sorted(bad.items())), "errors_by_kind": dict(sorted(errors.items())),
            "reasons": {**SKIP_REASONS, **stage.reasons}, "examples": dict(examples), "settings": stage.describe(),
            "metrics": summary.get("metrics", {}), "sections": summary.get("sections", {}),
            "by_category": summary.get("by_category"), "run": {k: (round(v, 2) if isinstance(v, float) else v)
                                                                for k, v in stats.items()},
            **(extra or {})}


def to_markdown(report: dict[str, Any]) -> str:
    c = report["counts"]
    lines = [f"# Curation stage `{report['stage']}`", "",
             f"- status: **{report['status']}**" + (f" -- {report['message']}" if report.get("message") else ""),
             f"- input: `{report['input']}` ({report['layout']} layout)"]
    if report.get("output"):
        lines.append(f"- output: `{report['output']}`")
    lines += [f"- settings: `{json.dumps(report['settings'], default=str)}`", "",
              "| | samples |", "| --- | ---: |"]
    for key, label in (("in", "in"), ("kept", "kept (out)"), ("removed", "removed by this stage"),
                       ("bad_input", "bad input (reported, not curated)"),
                       ("errors", "errors (retried on rerun)"), ("pending", "not reached yet")):
        lines.append(f"| {label} | {c[key]} |")
    for title, key, status in (("Removed, by reason", "removed_by_reason", "dropped"),
                               ("Bad input, by kind", "bad_input_by_kind", "bad_input"),
                               ("Errors, by kind", "errors_by_kind", "error")):
        if not report[key]:
            continue
        lines += ["", f"## {title}", "", "| reason | count | meaning | examples |", "| --- | ---: | --- | --- |"]
        for reason, n in report[key].items():
            ex = "<br>".join(f"`{e['id']}`: {e['detail']}".replace("|", "\\|")
                             for e in report["examples"].get(f"{status}:{reason}", []))
            lines.append(f"| {reason} | {n} | {report['reasons'].get(reason, '')} | {ex} |")
    if report.get("metrics"):
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in report["metrics"].items()]
    for title, body in (report.get("sections") or {}).items():
        lines += ["", f"## {title}", "", body]
    run = report["run"]
    lines += ["", f"Run: {run.get('reused', 0)} samples reused from earlier runs, {run.get('processed', 0)} rows "
              f"written in {run.get('batches_run', 0)} batches, {run.get('elapsed_s', 0)} s."]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: str | Path) -> None:
    out = Path(out_dir)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(to_markdown(report))
    try:
        (out.parent / "README.md").write_text(pipeline_markdown(out.parent))
    except OSError as err:  # the pipeline summary is a convenience
        log.warning("could not write the pipeline summary: %s", err)


STAGE_ORDER = ("reexecute", "no_tool_solvable", "judge", "rl_pass_rate")


def pipeline_markdown(root: str | Path) -> str:
    """One funnel table over the stage reports under ``root``."""
    root = Path(root)
    reports = []
    for path in sorted(root.glob("*/report.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except ValueError:
            continue
    reports.sort(key=lambda r: (STAGE_ORDER.index(r["stage"]) if r["stage"] in STAGE_ORDER else 99, r["stage"]))
    lines = ["# Curation pipeline", "", "| stage | status | in | kept | removed | bad input | errors | removed by reason |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in reports:
        c = r["counts"]
        reasons = ", ".join(f"{k} {v}" for k, v in r["removed_by_reason"].items()) or "-"
        lines.append(f"| [{r['stage']}]({r['stage']}/report.md) | {r['status']} | {c['in']} | {c['kept']} | "
                     f"{c['removed']} | {c['bad_input']} | {c['errors']} | {reasons} |")
    return "\n".join(lines) + "\n"


def log_report(logger: Any, report: dict[str, Any]) -> None:
    """Counts and metrics to a Lightning logger; with W&B also the examples table. Never raises."""
    if logger is None:
        return
    stage = report["stage"]
    try:
        metrics = {f"curate/{stage}/{k}": float(v) for k, v in report["counts"].items()}
        metrics.update({f"curate/{stage}/removed/{k}": float(v) for k, v in report["removed_by_reason"].items()})
        metrics.update({f"curate/{stage}/bad_input/{k}": float(v) for k, v in report["bad_input_by_kind"].items()})
        metrics.update({f"curate/{stage}/{k}": float(v) for k, v in report["metrics"].items()
                        if isinstance(v, (int, float))})
        logger.log_metrics(metrics)
        experiment = getattr(logger, "experiment", None)
        if type(logger).__name__ == "WandbLogger" and experiment is not None:
            import wandb

            data = [[key.split(":", 1)[0], key.split(":", 1)[1], e["id"], e["detail"]]
                    for key, exs in report["examples"].items() for e in exs]
            experiment.log({f"curate/{stage}/examples": wandb.Table(columns=["status", "reason", "id", "detail"],
                                                                     data=data)})
            experiment.summary.update({"status": report["status"]})
        if hasattr(logger, "save"):
            logger.save()
    except Exception as err:  # noqa: BLE001 - reporting must not lose a finished stage
        log.warning("could not log the curation report to %s: %s", type(logger).__name__, err)
