"""What every entry point does around ``trainer.fit``: seeding, resume, W&B config, the summary."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf, open_dict

from metis.launch.validate import check_resources, search_backends, validate_config
from metis.utils.summary import dashboard_command, metric_lines, trend_lines

log = logging.getLogger("metis")


@dataclass
class Run:
    cfg: DictConfig
    output_dir: Path
    ckpt_path: str | None
    trainer: Any = None
    module: Any = None

    def reseed(self) -> None:
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)

    def attach(self, trainer, module) -> None:
        self.trainer, self.module = trainer, module
        for lg in trainer.loggers:
            lg.log_hyperparams(OmegaConf.to_container(self.cfg, resolve=True))
            run_id = getattr(getattr(lg, "experiment", None), "id", None)
            if trainer.global_rank == 0 and isinstance(run_id, str):
                (self.output_dir / "wandb_run_id").write_text(run_id)


def _resolve_ckpt(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last``: the newest COMPLETE checkpoint of the run (periodic, final or pre-emption; see
    metis.utils.checkpoints); a checkpoint cut short has no completion marker and is skipped."""
    if ckpt_path != "last":
        return ckpt_path
    from metis.utils.checkpoints import latest_complete

    found = latest_complete(output_dir / "checkpoints")
    if found is None:
        log.warning("ckpt_path=last but %s/checkpoints holds no complete checkpoint: starting fresh", output_dir)
        return None
    log.info("ckpt_path=last: resuming from %s", found)
    return str(found)


def quiet_libraries() -> None:
    """Keep the console for the progress bar and the summary."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # Lightning's start-up notes (accelerators found, "Tip: try litlogger") are not about this run
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric.utilities.rank_zero").setLevel(logging.WARNING)
    if os.environ.get("WANDB_SILENT", "").lower() == "true":  # before the logger's own settings warn
        import wandb

        wandb.termsetup(wandb.Settings(silent=True), None)
    # RL updates happen inside training_step (manual optimisation): the checkpoint holds the state
    # after the step's updates, which is what resuming needs.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    warnings.filterwarnings("ignore", message=".*srun. command is available on your system but is not used.*")
    # the prompt sampler's position lives in the DataModule's state (exact resume), not the DataLoader's
    warnings.filterwarnings("ignore", message=".*dataloader.*is not resumable.*")


def prepare_run(cfg: DictConfig) -> Run:
    from metis.utils.checkpoints import catch_early_signal

    catch_early_signal()  # a pre-emption signal during model building stops at the first step boundary
    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ckpt_path = _resolve_ckpt(cfg.get("ckpt_path"), output_dir)
    id_file = output_dir / "wandb_run_id"
    logger = cfg.get("logger")
    if ckpt_path and id_file.exists() and logger and str(logger.get("_target_", "")).endswith("WandbLogger"):
        with open_dict(cfg):  # a resumed run continues the same W&B run
            cfg.logger.id = id_file.read_text().strip()
            cfg.logger.resume = "allow"
    return Run(cfg=cfg, output_dir=output_dir, ckpt_path=ckpt_path)


def dry_run(cfg: DictConfig) -> dict[str, float]:
    """Validate a config without hardware or weights: resolve it, check values and types, build the
    cheap parts, read the first rows of an RL prompt set, import the verifiers, ask the judge, and
    check that the search back-ends exist (:mod:`metis.launch.validate`)."""
    import hydra

    validate_config(cfg, check_hardware=False)
    OmegaConf.resolve(cfg)
    built = []
    for key in ("reward", "loss"):
        if cfg.get(key) is not None:
            hydra.utils.instantiate(cfg[key])
            built.append(key)
    if cfg.get("rollout") is not None:
        hydra.utils.instantiate(cfg.rollout.loop)
        built.append("rollout.loop")
    checked = check_resources(cfg) + search_backends(cfg, require_real=bool(cfg.get("require_real_search")))
    print(f"config OK: {cfg.get('experiment_name')} (built {', '.join(built)}; model, data and trainer not built)")
    for line in checked:
        print(f"  {line}")
    return {}


def _ignore_late_requeue_signal() -> None:
    """After ``fit`` Lightning restores the default SIGUSR1 action (terminate). SLURM's
    ``--signal=USR1@120`` can still land while the run exports and closes its logger; training is
    over and its checkpoint is written, so log the signal and finish instead of dying half-way
    through the export."""
    import signal

    if not hasattr(signal, "SIGUSR1"):
        return

    def handler(signum, _frame):
        log.warning("signal %d after training finished: nothing to requeue, finishing the run", signum)

    try:
        signal.signal(signal.SIGUSR1, handler)
    except ValueError:  # not the main thread
        pass


def _wandb_run(logger) -> Any:
    """The logger's W&B run (it has a folder), else None."""
    exp = getattr(logger, "experiment", None)
    return exp if getattr(exp, "dir", None) else None


def _finish_preempted(trainer, preemption, metrics: dict[str, float]) -> dict[str, float]:
    """After a pre-emption save: no export and no summary (the requeued job writes them at its end);
    close the loggers first, then requeue, since SLURM kills the job as it requeues it."""
    if trainer.global_rank == 0:
        for lg in trainer.loggers:
            if (exp := _wandb_run(lg)) is not None:
                exp.finish()
        job = preemption.requeue_job()
        print(f"Metis run pre-empted at step {trainer.global_step}: saved {preemption.saved}"
              + (f", requeued SLURM job {job}" if job else " (not a SLURM job: resume with ckpt_path=last)"), flush=True)
    return metrics


def finish_run(run: Run, trainer, module) -> dict[str, float]:
    from metis.utils.checkpoints import preemption_of

    _ignore_late_requeue_signal()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    preemption = preemption_of(trainer)
    if preemption is not None:
        return _finish_preempted(trainer, preemption, metrics)
    export = run.output_dir / "hf"
    if hasattr(module, "export_pretrained"):
        module.export_pretrained(export)  # every rank: gathering FSDP2 shards is a collective
    if trainer.global_rank != 0:
        return metrics
    lines = ["", "Metis run finished", f"  output dir : {run.output_dir.resolve()}"]
    for cb in trainer.checkpoint_callbacks:
        if cb.last_model_path or cb.best_model_path:
            lines.append(f"  checkpoint : {Path(cb.last_model_path or cb.best_model_path).resolve()}")
    if export.exists():
        lines.append(f"  HF export  : {export.resolve()} (use as model.init_from)")
    for lg in trainer.loggers:
        exp = _wandb_run(lg)
        if exp is not None:
            mode = "offline" if getattr(exp, "offline", False) or os.environ.get("WANDB_MODE") in ("offline", "dryrun") else "online"
            lines.append(f"  W&B run    : {Path(exp.dir).parent.resolve()} ({mode}; `wandb sync` uploads it)")
            exp.finish()
        elif getattr(lg, "log_dir", None):
            lines.append(f"  logs       : {Path(lg.log_dir).resolve()}")
    before = next((cb.before for cb in trainer.callbacks if getattr(cb, "before", None)), None)
    rl_step = getattr(module, "rl_step", None)
    trend = next((cb.trend() for cb in trainer.callbacks if callable(getattr(cb, "trend", None))), None)
    trend_printed = trend_lines(*trend) if trend is not None else []
    lines += metric_lines(metrics, before, rl_step, skip=frozenset(trend[1]) if trend_printed else frozenset())
    lines += trend_printed
    if rl_step is not None:  # the dashboard draws RL runs
        lines.append(f"  curves     : {dashboard_command(run.output_dir)}")
    print("\n".join(lines), flush=True)
    return metrics


def plain(value: Any) -> Any:
    """OmegaConf containers (and tuples) -> plain dicts and lists, recursively."""
    from omegaconf import Container

    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def plain_hparams(module) -> None:
    """Keep a module's saved hyper-parameters to plain types, so every checkpoint (single-file or
    distributed) loads with ``torch.load(weights_only=True)``."""
    hparams = getattr(module, "hparams", None)
    if hparams is not None:
        for key in list(hparams.keys()):
            hparams[key] = plain(hparams[key])
