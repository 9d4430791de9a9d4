"""Helpers for the curation tests: config composition, result reading, engines that crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir

from metis.curation.synthetic_raw import PlantedEngine

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"


def curate_cfg(root: Path, stage: str, *overrides: str, wandb: bool = False):
    """``python -m metis.curate stage=<stage> root=<root> <overrides>`` as a composed config
    (W&B offline when ``wandb``, else no logger)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="curate", overrides=[
            f"stage={stage}", f"root={root}", "progress=false", f"paths.output_dir={root}/{stage}",
            "logger.offline=true" if wandb else "~logger", *overrides])


def planted(plan_path: str | Path, cache_dir: str) -> list[str]:
    """Overrides that swap the rollout engine for the planted one (the rest of the policy is real)."""
    return ["rollout.engine._target_=metis.curation.synthetic_raw.PlantedEngine", f"+rollout.engine.plan={plan_path}",
            f"paths.cache_dir={cache_dir}", "rollout.loop.max_new_tokens=48", "rollout.loop.max_response_tokens=160",
            "tools.tools.0.pool_size=1"]  # few tool calls: one warm interpreter is enough


def judge_overrides(url: str, **extra: Any) -> list[str]:
    return [f"judge.base_url={url}", "judge.api_key_env=null", "judge.trust_env=false", "judge.backoff_s=0.01",
            "judge.timeout_s=10", *[f"judge.{k}={v}" for k, v in extra.items()]]


def results(stage_dir: Path) -> dict[str, dict[str, Any]]:
    """The last row per id of a stage's results.jsonl."""
    rows: dict[str, dict[str, Any]] = {}
    for line in (Path(stage_dir) / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows[row["id"]] = row
    return rows


def kept(stage_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    from metis.data.schema import load_records

    view = load_records(Path(stage_dir) / "kept.parquet")
    return [(view[i].id, view[i].meta) for i in range(len(view))]  # index: RecordView turns IndexError into BadRecord


class CrashingEngine(PlantedEngine):
    """The planted engine that raises on its ``crash_at``-th generate call (a crash mid-stage)."""

    def __init__(self, plan: str, crash_at: int = -1, **kw: Any) -> None:
        super().__init__(plan, **kw)
        self.crash_at, self.n_calls = crash_at, 0

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        if self.n_calls == self.crash_at:
            raise RuntimeError("simulated crash in the middle of a stage")
        self.n_calls += 1
        return super().generate(trajs, max_new_tokens, stop_ids, greedy)
