"""Entry point: ``python -m metis.curate stage=<reexecute|no_tool_solvable|judge|rl_pass_rate> [key=value ...]``.

Reads the stage's input (``stage.input``; by default the previous stage's ``kept.parquet`` under
``root``), runs the stage (:mod:`metis.curation`), and writes ``results.jsonl`` (resumable),
``kept.parquet``, ``report.md`` / ``report.json`` under ``<root>/<stage>/`` and the report to the
logger (W&B offline by default). See docs/curation.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("metis.curate")


def curate(cfg: DictConfig, stage: Any = None, logger: Any = None) -> dict[str, Any]:
    """Run one stage; ``stage`` (a :class:`metis.curation.runner.Stage`) replaces the configured one."""
    from metis.data.samples import SampleSource
    from metis.curation.runner import run_stage

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per judge request otherwise
    if cfg.stage.get("input") in (None, ""):
        raise ValueError(f"stage {cfg.stage.name}: no input; set stage.input=<parquet/jsonl> "
                         f"(or raw_sft= / raw_rl= for the first stages)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    except Exception:  # noqa: BLE001 - outside a Hydra run ${hydra:...} cannot resolve
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    if stage is None:
        stage = hydra.utils.instantiate(cfg.stage.impl, _recursive_=False)
    source = SampleSource(cfg.stage.input, image_root=cfg.stage.get("image_root"),
                          layout=cfg.stage.get("layout", "auto"), limit=cfg.get("limit"),
                          trajectories=bool(getattr(stage, "input_trajectories", True)),
                          require_answer=not bool(cfg.stage.get("keep_answerless", False)),
                          max_skipped_fraction=float(cfg.get("max_skipped_fraction", 1.0)),
                          skipped_rows_file=out / "skipped_rows.jsonl")
    if logger is None and cfg.get("logger"):
        logger = hydra.utils.instantiate(cfg.logger)
    try:
        return run_stage(stage, source, out, batch_size=int(cfg.batch_size), seed=int(cfg.seed),
                         resume=bool(cfg.resume), progress=bool(cfg.progress), logger=logger,
                         examples_per_reason=int(cfg.examples_per_reason))
    finally:
        experiment = getattr(logger, "experiment", None) if logger is not None else None
        if experiment is not None and hasattr(experiment, "finish"):
            experiment.finish()


@hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name="curate",
            version_base="1.3")
def main(cfg: DictConfig) -> int:
    from metis.curation.runner import StageAborted

    try:
        report = curate(cfg)
    except StageAborted as err:
        log.error("curation stage %s stopped: %s", cfg.stage.name, err)
        report_md = Path(cfg.output_dir).resolve() / "report.md"
        where = f"\nreport: {report_md}" if report_md.exists() else ""
        print(f"\nstage {cfg.stage.name} INCOMPLETE: {err}{where}", flush=True)
        raise SystemExit(2) from None
    except (ValueError, FileNotFoundError) as err:  # bad input or settings, found before any sample ran
        log.error("curation stage %s cannot start: %s", cfg.stage.name, err)
        print(f"\nstage {cfg.stage.name} cannot start: {err}", flush=True)
        raise SystemExit(2) from None
    c = report["counts"]
    print(f"\nstage {report['stage']} {report['status']}: {c['in']} in, {c['kept']} kept, {c['removed']} removed "
          f"{report['removed_by_reason']}, {c['bad_input']} bad input {report['bad_input_by_kind']}, "
          f"{c['errors']} errors -> {Path(cfg.output_dir).resolve()}", flush=True)
    return c["kept"]


if __name__ == "__main__":
    main()
