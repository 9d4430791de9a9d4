"""Entry point: ``python -m metis.evaluate model=<m> benchmark=<name> tools=<all|none|python_only>``.

Loads the benchmark, runs the training agent loop over it (greedy, resumable, ``limit=N`` for a
quick check), scores the answers (rules, then the LLM judge where configured) and writes the
tables under ``output_dir`` (see docs/evaluation.md). Everything else lives in :mod:`metis.eval`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from metis.agent.loop import AgentLoop
from metis.eval.benchmarks import load_benchmark
from metis.eval.report import (
    comparison_table,
    log_to_logger,
    to_markdown,
    write_reports,
)
from metis.eval.runner import EvalRunner
from metis.eval.scoring import aggregate, score_records
from metis.utils.registry import import_extensions

log = logging.getLogger("metis.evaluate")


def _choice(group: str, default: str) -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices.get(group, default))
    except Exception:  # noqa: BLE001 - outside a Hydra run (tests, notebooks)
        return default


def build_judge(cfg_judge: Any, cache_path: Path):
    """An :class:`metis.io.judge.LLMJudge` from ``judge`` ({base_url, model, ...}), or None."""
    if not cfg_judge:
        return None
    kwargs = OmegaConf.to_container(cfg_judge, resolve=True) if isinstance(cfg_judge, DictConfig) else dict(cfg_judge)
    kwargs.setdefault("_target_", "metis.io.judge.LLMJudge")
    kwargs.setdefault("cache_path", str(cache_path))
    return hydra.utils.instantiate(kwargs)


def evaluate(cfg: DictConfig, model=None, processor=None, toolbox=None, engine=None, logger=None) -> dict[str, Any]:
    """Run one benchmark; parts given as arguments replace the configured ones (tests, notebooks)."""
    import_extensions(cfg.get("extensions"))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    bench_cfg = OmegaConf.to_container(cfg.benchmark, resolve=True)
    bench = load_benchmark(**bench_cfg, limit=cfg.get("limit"))
    if bench.skipped:
        (out / "skipped_rows.json").write_text(json.dumps(bench.skipped, indent=1))
    toolbox = toolbox if toolbox is not None else hydra.utils.instantiate(cfg.tools)

    devices: list[str] = []

    def make_agent() -> AgentLoop:  # called only when some sample still has to be generated
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
        return AgentLoop(engine, toolbox, processor, hydra.utils.instantiate(cfg.rollout.loop))

    try:
        runner = EvalRunner(make_agent, out / "predictions.jsonl", bench.name, batch_size=int(cfg.batch_size),
                            greedy=bool(cfg.greedy), resume=bool(cfg.resume))
        stats = runner.run(bench.tasks)
        records = runner.records(bench.tasks)
        tool_stats = toolbox.metrics() if hasattr(toolbox, "metrics") else {}
    finally:
        if hasattr(toolbox, "close"):
            toolbox.close()
    judge = build_judge(cfg.get("judge"), Path(cfg.paths.cache_dir) / "judge_cache.jsonl")
    try:
        scored = score_records(records, judge)
    finally:
        if judge is not None:
            judge.close()
    metrics = aggregate(scored, bench_cfg.get("group_by") or (), bench_cfg.get("extra_metrics") or ())
    results = {
        "benchmark": bench.name, "model": cfg.get("model_name") or _choice("model", "model"),
        "tools": cfg.get("tools_name") or _choice("tools", "tools"),
        "tool_names": [s["name"] for s in toolbox.specs()], "origin": bench.origin,
        "primary_metric": bench_cfg.get("primary_metric", "accuracy"), "limit": cfg.get("limit"),
        "skipped_rows": len(bench.skipped), "metrics": metrics,
        "run": {"reused": stats.reused, "generated": stats.generated, "failed": stats.failed,
                "elapsed_s": round(stats.elapsed_s, 2), "greedy": bool(cfg.greedy),
                "device": devices[-1] if devices else None},
        "toolbox_metrics": tool_stats,
        "judge": None if judge is None else {"model": judge.model, "base_url": judge.url,
                                             "prompt_version": judge.prompt_version, "prompt": judge.prompt},
    }
    paths = write_reports(out, results, scored)
    if logger is None and cfg.get("logger"):
        logger = hydra.utils.instantiate(cfg.logger)
    log_to_logger(logger, results, scored, {t.id: t for t in bench.tasks}, int(cfg.get("samples_to_log", 32)))
    if logger is not None and hasattr(getattr(logger, "experiment", None), "finish"):
        logger.experiment.finish()
    print(f"\n{bench.name}: {len(scored)} samples ({stats.reused} reused, {stats.generated} generated, "
          f"{stats.failed} failed), {len(bench.skipped)} rows skipped -> {paths['table_md'].parent.resolve()}\n"
          + to_markdown(comparison_table(results)), flush=True)
    return results


@hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name="evaluate",
            version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg)["metrics"].get("accuracy")


if __name__ == "__main__":
    main()
