"""Entry point: ``python -m metis.evaluate model=<m> benchmark=<name> tools=<all|none|python_only>``.

``mode=generate`` (default) loads the benchmark, runs the training agent loop over it (greedy,
resumable under a fingerprint, ``limit=N`` for a quick check), scores the answers (rules, then
the LLM judge where configured) and writes the tables under ``output_dir``. ``mode=score
predictions=<file>`` re-scores an existing prediction file (this project's, VLMEvalKit's or
lmms-eval's) against the current data without loading a model. See docs/evaluation.md.

Exit status: 0 when every row was scored; 1 when rows stayed unscored with ``judge.required``
or nothing could be scored (the tables are written first); 2 on bad input (one line on stderr).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from metis.eval.benchmarks import load_benchmark
from metis.eval.fingerprint import fingerprint_mismatch, fingerprint_parts, provenance, run_fingerprint
from metis.eval.formats import EvalError
from metis.eval.judging import build_judge
from metis.eval.metrics import aggregate
from metis.eval.predictions import read_prediction_file
from metis.eval.report import comparison_table, log_to_logger, run_flags, to_markdown, write_reports
from metis.eval.runner import EvalLoop, EvalRunner, read_predictions
from metis.eval.scoring import score_records
from metis.utils.registry import import_extensions

log = logging.getLogger("metis.evaluate")


def _choice(group: str, default: str) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(group, default))
    except Exception:  # noqa: BLE001 - outside a Hydra run (tests, notebooks)
        return default


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _output_dir(out: Path, parts: dict[str, Any], fingerprint: str, resume: bool, on_mismatch: str) -> Path:
    """The folder this run writes to: ``out`` unless its predictions were made under another
    fingerprint, then ``<out>-<fingerprint[:8]>`` (``on_mismatch=new_folder``) or an EvalError."""
    if on_mismatch not in ("error", "new_folder"):
        raise EvalError(f"on_mismatch={on_mismatch!r}: expected error or new_folder")
    preds = out / "predictions.jsonl"
    known = read_predictions(preds) if resume else {}
    if not known:
        return out
    fp_file = out / "fingerprint.json"
    try:
        old = json.loads(fp_file.read_text()) if fp_file.exists() else None
    except ValueError:
        old = None  # unreadable: treated as unknown, the records' own stamps decide
    stamps = {r.get("fingerprint") for r in known.values()}
    if stamps == {fingerprint}:  # every record carries this run's fingerprint (fingerprint.json only explains)
        return out
    reason = fingerprint_mismatch((old or {}).get("parts"), parts)
    if on_mismatch == "new_folder":
        new = out.with_name(f"{out.name}-{fingerprint[:8]}")
        log.warning("%s: predictions made under another fingerprint (changed: %s); this run goes to %s",
                    preds, reason, new)
        return new
    raise EvalError(f"{preds}: predictions made under another fingerprint (changed: {reason}; "
                    f"{(old or {}).get('fingerprint')} != {fingerprint}), not reused. Set resume=false to start over "
                    "(the old file is kept as .bak), on_mismatch=new_folder, or another output_dir")


def _generate(cfg: DictConfig, bench_cfg: dict[str, Any], model, processor, toolbox, engine):
    from metis.core.format import build_system_prompt

    bench = load_benchmark(**bench_cfg, limit=cfg.get("limit"))
    toolbox = toolbox if toolbox is not None else hydra.utils.instantiate(cfg.tools)
    try:  # the toolbox is closed however this ends (a refused resume included)
        specs = toolbox.specs()
        parts = fingerprint_parts(_plain(cfg.model), build_system_prompt(specs), specs, _plain(cfg.rollout.loop),
                                  bool(cfg.greedy), _plain(cfg.rollout.get("engine")) or {})
        fingerprint = run_fingerprint(parts)
        out = _output_dir(Path(cfg.output_dir), parts, fingerprint, bool(cfg.resume),
                          str(cfg.get("on_mismatch", "error")))
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (out / "fingerprint.json").write_text(json.dumps({"fingerprint": fingerprint, "parts": parts}, indent=1))
        devices: list[str] = []

        def make_agent() -> EvalLoop:  # called only when some sample still has to be generated
            nonlocal model, processor, engine
            if model is None:
                import torch

                model, processor = hydra.utils.instantiate(cfg.model)
                device = str(cfg.get("device", "auto"))
                model.to(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
            engine = engine if engine is not None else hydra.utils.instantiate(cfg.rollout.engine)
            engine.bind(model, processor)
            param = next(model.parameters(), None)
            devices.append(str(param.device) if param is not None else "?")
            log.info("policy on %s (%s)", devices[-1], getattr(param, "dtype", "?"))
            return EvalLoop(engine, toolbox, processor, hydra.utils.instantiate(cfg.rollout.loop))

        runner = EvalRunner(make_agent, out / "predictions.jsonl", bench.name, batch_size=int(cfg.batch_size),
                            greedy=bool(cfg.greedy), resume=bool(cfg.resume), fingerprint=fingerprint)
        stats = runner.run(bench.tasks)
        records = runner.records(bench.tasks)
        tool_stats = toolbox.metrics() if hasattr(toolbox, "metrics") else {}
    finally:
        if hasattr(toolbox, "close"):
            toolbox.close()
    run = {"reused": stats.reused, "generated": stats.generated, "failed": stats.failed, "stale": stats.stale,
           "elapsed_s": round(stats.elapsed_s, 2), "greedy": bool(cfg.greedy),
           "device": devices[-1] if devices else None}
    extra = {"tool_names": [s["name"] for s in specs], "toolbox_metrics": tool_stats, "fingerprint": fingerprint}
    return out, bench, records, run, extra, parts


def _score_only(cfg: DictConfig, bench_cfg: dict[str, Any]):
    if not cfg.get("predictions"):
        raise EvalError("mode=score needs predictions=<file> (predictions.jsonl, a VLMEvalKit .xlsx/.tsv or an "
                        "lmms-eval samples .jsonl)")
    path = Path(str(cfg.predictions)).expanduser()
    fmt, preds = read_prediction_file(path)
    try:
        bench = load_benchmark(**bench_cfg, limit=cfg.get("limit"), images=False)
        truth_source = "benchmark data"
    except (FileNotFoundError, EvalError) as err:
        rows = [p["row"] for p in preds if p.get("row")]
        if not rows:
            raise EvalError(f"mode=score: {path} holds no ground truth and the benchmark data is missing "
                            f"({err})") from None
        log.warning("benchmark data unavailable (%s); scoring against the ground truth in %s", err, path)
        bench = load_benchmark(**bench_cfg, limit=cfg.get("limit"), images=False, rows=rows, origin=str(path))
        truth_source = "prediction file"
    ids = {t.id for t in bench.tasks}
    matched = [p for p in preds if p["id"] in ids]
    if not matched:
        raise EvalError(f"{path}: none of its {len(preds)} ids (e.g. {preds[0]['id']!r}) is a {bench.name} id "
                        f"(e.g. {bench.tasks[0].id!r}); is benchmark={bench.name} the right one?")
    by_id = {p["id"]: p for p in matched}
    records = [{**by_id[t.id], "benchmark": bench.name} for t in bench.tasks if t.id in by_id]
    out = Path(str(cfg.get("score_dir") or path.parent / f"score_{bench.name}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "score_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    run = {"reused": len(records), "generated": 0, "failed": 0, "stale": 0, "elapsed_s": 0.0,
           "without_prediction": len(bench.tasks) - len(records), "not_in_data": len(preds) - len(matched)}
    extra = {"tool_names": [], "toolbox_metrics": {}, "predictions": str(path), "predictions_format": fmt,
             "truth_source": truth_source, "fingerprint": None}
    return out, bench, records, run, extra, None


def evaluate(cfg: DictConfig, model=None, processor=None, toolbox=None, engine=None, logger=None) -> dict[str, Any]:
    """Run one benchmark; parts given as arguments replace the configured ones (tests, notebooks).
    ``results["problems"]`` lists what makes the run fail (non-zero exit from the command line)."""
    import_extensions(cfg.get("extensions"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mode = str(cfg.get("mode") or "generate")
    if mode not in ("generate", "score"):
        raise EvalError(f"mode={mode!r}: expected generate or score")
    bench_cfg = _plain(cfg.benchmark)
    judge, jset = build_judge(_plain(cfg.get("judge")), Path(cfg.paths.cache_dir))  # fails fast
    try:
        if mode == "score":
            out, bench, records, run, extra, parts = _score_only(cfg, bench_cfg)
        else:
            out, bench, records, run, extra, parts = _generate(cfg, bench_cfg, model, processor, toolbox, engine)
        if bench.skipped:
            (out / "skipped_rows.json").write_text(json.dumps(bench.skipped, indent=1))
        scored = score_records(records, judge, {t.id: t for t in bench.tasks}, bench_cfg.get("answer_rule"),
                               int(jset["max_failures"]), float(jset["probe_timeout_s"]))
    finally:
        if judge is not None:
            judge.close()
    metrics = aggregate(scored, bench_cfg.get("group_by") or (), bench_cfg.get("extra_metrics") or ())
    results = {
        "benchmark": bench.name, "mode": mode, "model": cfg.get("model_name") or _choice("model", "model"),
        "tools": cfg.get("tools_name") or _choice("tools", "tools"), "origin": bench.origin,
        "primary_metric": bench_cfg.get("primary_metric", "accuracy"), "limit": cfg.get("limit"),
        "skipped_rows": len(bench.skipped), "metrics": metrics, "run": run, **extra,
        "provenance": provenance(bench.origin if Path(bench.origin).exists() else bench_cfg.get("path"), parts,
                                 extra.get("fingerprint")),
        "judge": None if judge is None else {"model": judge.model, "base_url": judge.url, "required": jset["required"],
                                             "prompt_version": judge.prompt_version, "prompt": judge.prompt},
    }
    results["flags"] = run_flags(results)
    problems = []
    if not metrics["scored"] or metrics["runtime_errors"] >= metrics["n"]:
        problems.append(f"{bench.name}: nothing could be scored ({metrics['n']:.0f} rows, "
                        f"{metrics['unscored']:.0f} unscored, {metrics['runtime_errors']:.0f} failed to generate)")
    elif metrics["unscored"] and jset["required"]:
        problems.append(f"{bench.name}: {metrics['unscored']:.0f} of {metrics['n']:.0f} rows unscored (the judge "
                        "could not be reached); they are left out of the accuracy. Rerun when the judge is up "
                        "(verdicts are cached), or set judge.required=false to accept the partial score")
    results["problems"] = problems
    paths = write_reports(out, results, scored)
    if logger is None and cfg.get("logger") and mode == "generate":
        logger = hydra.utils.instantiate(cfg.logger)
    log_to_logger(logger, results, scored, {t.id: t for t in bench.tasks}, int(cfg.get("samples_to_log", 32)))
    if logger is not None and hasattr(getattr(logger, "experiment", None), "finish"):
        logger.experiment.finish()
    print(f"\n{bench.name}: {len(scored)} samples ({run['reused']} reused, {run['generated']} generated, "
          f"{run['failed']} failed), {metrics['unscored']:.0f} unscored, {len(bench.skipped)} rows skipped -> "
          f"{paths['table_md'].parent.resolve()}\n" + (f"flags: {'; '.join(results['flags'])}\n" if results["flags"]
                                                     else "") + to_markdown(comparison_table(results)), flush=True)
    return results


@hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name="evaluate",
            version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    try:
        results = evaluate(cfg)
    except (EvalError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    for problem in results["problems"]:
        print(f"error: {problem}", file=sys.stderr, flush=True)
    if results["problems"]:
        sys.exit(1)
    return results["metrics"].get("accuracy")


if __name__ == "__main__":
    main()
