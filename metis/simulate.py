"""Entry point: ``python -m metis.simulate sim=<scenario> reward=<scheme> [schemes=all] [key=value ...]``.

Trains a tabular tool-use policy (metis/sim) with one or more registered reward schemes on one
scenario, `num_seeds` seeds vectorised in one process, and writes summary.{md,csv}, curves.csv,
curves_per_seed.csv and curves.png to the run directory (and to W&B with ``logger=wandb``).
``--multirun reward=hdpo,grpo seed=0,5`` works (one table per job); ``schemes=all`` runs every
registered scheme plus `variants` in one process.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from metis.sim.engine import History, SimConfig, simulate
from metis.sim.report import log_to_wandb, write_report
from metis.sim.scenario import build_scenario
from metis.sim.schemes import resolve_schemes
from metis.utils.registry import import_extensions

log = logging.getLogger("metis.simulate")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def run_simulation(cfg: DictConfig) -> dict[str, Any]:
    """Build scenario, schemes and objective from ``cfg``, simulate, write the report."""
    import_extensions(cfg.get("extensions"))
    torch.set_num_threads(int(cfg.get("threads", 1)))
    out_dir = Path(cfg.paths.output_dir)
    scenario = build_scenario(OmegaConf.to_container(cfg.sim, resolve=True))  # type: ignore[arg-type]
    schemes = resolve_schemes(cfg.get("reward"), cfg.get("schemes"), cfg.get("variants"), CONF_DIR)
    objective = hydra.utils.instantiate(cfg.loss)
    sim_cfg = SimConfig(**OmegaConf.to_container(cfg.train, resolve=True))  # type: ignore[arg-type]
    seeds = list(range(int(cfg.seed), int(cfg.seed) + int(cfg.num_seeds)))
    histories: list[History] = []
    t0 = time.perf_counter()
    for label, scheme in schemes.items():
        t1 = time.perf_counter()
        histories.append(simulate(scenario, scheme, objective, sim_cfg, seeds, label=label))
        log.info("%-40s %d seeds x %d steps in %.1fs", label, len(seeds), sim_cfg.steps, time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    rep = cfg.report
    title = f"{scenario.name}: {len(schemes)} schemes x {len(seeds)} seeds x {sim_cfg.steps} steps"
    df = write_report(histories, out_dir, title, rep.threshold, rep.tail, rep.smooth, rep.plots, rep.per_seed_csv)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (out_dir / "wall_time.txt").write_text(f"{wall:.2f} s simulation ({len(schemes)} schemes, {len(seeds)} seeds, "
                                           f"{sim_cfg.steps} steps)\n")
    if cfg.get("logger"):
        os.environ.setdefault("WANDB_SILENT", "true")
        logger_cfg = cfg.logger

        def make_logger(label: str) -> Any:
            return hydra.utils.instantiate(logger_cfg, name=f"sim-{scenario.name}-{label}")

        hparams = {"sim": OmegaConf.to_container(cfg.sim, resolve=True),
                   "train": OmegaConf.to_container(cfg.train, resolve=True), "seeds": seeds}
        log_to_wandb(histories, make_logger, df, hparams, out_dir / "curves.png")
    print((out_dir / "summary.md").read_text())
    print(f"simulation wall time: {wall:.1f} s; outputs in {out_dir.resolve()}", flush=True)
    return {"summary": df, "histories": histories, "wall_s": wall, "out_dir": out_dir}


@hydra.main(config_path=str(CONF_DIR), config_name="simulate", version_base="1.3")
def main(cfg: DictConfig) -> float:
    res = run_simulation(cfg)
    return float(res["summary"]["accuracy"].iloc[0])


if __name__ == "__main__":
    main()
