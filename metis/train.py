"""Entry point: ``python -m metis.train [experiment=<name>] [group=option ...] [key=value ...]``.

A thin sequence of ``hydra.utils.instantiate`` calls: policy, data, module, logger, callbacks,
trainer, then ``fit``. Everything else lives in the layers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from metis.utils.registry import import_extensions
from metis.launch.run import dry_run, finish_run, plain_hparams, prepare_run

log = logging.getLogger("metis.train")


def train(cfg: DictConfig) -> dict[str, float]:
    """Build every part from ``cfg`` and fit; returns the final logged metrics."""
    import_extensions(cfg.get("extensions"))
    if cfg.get("dry_run"):
        return dry_run(cfg)
    run = prepare_run(cfg)
    model, processor = hydra.utils.instantiate(cfg.model)
    datamodule = hydra.utils.instantiate(cfg.data, processor=processor)
    module = hydra.utils.instantiate(cfg.module, model=model, processor=processor)
    plain_hparams(module)
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = hydra.utils.instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    run.attach(trainer, module)
    run.reseed()  # however the parts were built (cache hit or miss), sampling starts from the seed
    trainer.fit(module, datamodule=datamodule, ckpt_path=run.ckpt_path)
    return finish_run(run, trainer, module)


@hydra.main(config_path=str(Path(__file__).resolve().parent.parent / "conf"), config_name="config",
            version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get("train/accuracy")


if __name__ == "__main__":
    main()
