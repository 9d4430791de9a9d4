"""Find runs, read their logged history (offline W&B or CSV) and group them into arms x seeds."""

from __future__ import annotations

import csv
import glob
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

STEP = "train/rl_step"
VAL_STEP = "val/rl_step"
# config keys that never make two runs different arms: the seed, where things are written, logging
IGNORED_PREFIXES = ("seed", "paths.", "hydra.", "logger.", "callbacks.", "ckpt_path", "tags", "group",
                    "task_name", "dry_run", "model.init_from", "module.rollout_log_dir", "model.cache_dir")


@dataclass
class RunData:
    path: Path
    config: dict[str, Any]
    rows: list[dict[str, float]]          # every logged row, with ``rl_step`` added
    label: str = ""
    seed: int | None = None
    keys: set[str] = field(default_factory=set)

    def series(self, key: str) -> dict[float, float]:
        """``{rl_step: value}`` of one metric (a later row of the same step wins: a resumed run)."""
        out = {}
        for row in self.rows:
            v = row.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[row["rl_step"]] = float(v)
        return out


def find_runs(patterns: Iterable[str]) -> list[Path]:
    """Run directories (those holding the resolved ``config.yaml`` Metis writes) from run folders,
    globs or a sweep's root (searched recursively)."""
    found: list[Path] = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(pattern))] or [Path(pattern)]
        for path in matches:
            if not path.exists():
                raise FileNotFoundError(f"no such run or folder: {path}")
            if (path / "config.yaml").is_file():
                found.append(path)
                continue
            for cfg in sorted(path.rglob("config.yaml")):
                if "wandb" not in cfg.relative_to(path).parts and "hf" not in cfg.relative_to(path).parts:
                    found.append(cfg.parent)
    seen, out = set(), []
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            out.append(p)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.strip():
        try:
            return float(value)
        except ValueError:
            return None
    return None


def with_rl_steps(rows: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Numeric rows in log order, each with ``rl_step``: its own ``train/rl_step``, a validation
    row's ``val/rl_step``, or else the last RL step logged before it (0 before the first step)."""
    out, step = [], 0.0
    for row in rows:
        nums = {k: v for k, v in ((k, _number(v)) for k, v in row.items()) if v is not None}
        if STEP in nums:
            step = nums[STEP]
        nums["rl_step"] = nums.get(VAL_STEP, step) if STEP not in nums else step
        out.append(nums)
    return out


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The run's logged rows, in order: offline W&B runs first (a resumed run has several, read
    oldest first), else Lightning's CSV logs."""
    wandb_runs = sorted((run_dir / "wandb").glob("offline-run-*")) + sorted((run_dir / "wandb").glob("run-*"))
    wandb_runs = [d for d in wandb_runs if d.is_dir() and any(d.glob("run-*.wandb"))]
    if wandb_runs:
        from metis.utils.wandb_offline import read_history

        return [row for d in wandb_runs for row in read_history(d)]
    csvs = sorted(run_dir.glob("csv/**/metrics.csv")) or sorted(run_dir.glob("**/metrics.csv"))
    rows: list[dict[str, Any]] = []
    for path in csvs:
        with open(path, newline="") as fh:
            rows.extend(csv.DictReader(fh))
    return rows


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: cfg if not isinstance(cfg, list) else tuple(map(str, cfg))}


def load_run(run_dir: Path) -> RunData:
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    rows = with_rl_steps(read_rows(run_dir))
    keys = set().union(*rows) if rows else set()
    return RunData(path=run_dir, config=config, rows=rows, seed=config.get("seed"), keys=keys)


def _seed_copies(flats: list[dict[str, Any]]) -> set[str]:
    """Nested keys that hold the run's own seed in every run (``data.seed: ${seed}``, resolved)."""
    keys = {k for f in flats for k in f if k.endswith(".seed")}
    return {k for k in keys if all(k in f and f[k] == f.get("seed") for f in flats)}


def _arm_keys(flat: dict[str, Any], seed_copies: set[str] = frozenset()) -> dict[str, Any]:
    """The keys that make an arm: not the seed (or its copies), not where things are written."""
    return {k: v for k, v in flat.items() if not k.startswith(IGNORED_PREFIXES)
            and k != "trainer.default_root_dir" and k not in seed_copies}


def label_runs(runs: list[RunData], group_by: list[str] | None = None) -> dict[str, list[RunData]]:
    """Group runs into arms (same config but the seed and the paths) and label each arm.

    The label is the reward scheme (``reward.name``, else ``experiment_name``) followed by the
    config values that set it apart from the other arms; ``group_by`` names the config keys
    (dotted) to group by instead."""
    flats = [flatten(r.config) for r in runs]
    if group_by:
        for run, flat in zip(runs, flats):
            run.label = ", ".join(f"{k.split('.')[-1]}={flat.get(k)}" for k in group_by)
    else:
        heads = [next((str(f[k]) for k in ("reward.name", "experiment_name") if f.get(k) is not None),
                      r.path.name) for r, f in zip(runs, flats)]
        seed_copies = _seed_copies(flats)
        for head in set(heads):
            members = [i for i, h in enumerate(heads) if h == head]
            arms = [_arm_keys(flats[i], seed_copies) for i in members]
            varying = sorted({k for a in arms for k in a if k != "experiment_name"
                              and len({repr(b.get(k)) for b in arms}) > 1})
            for i, arm in zip(members, arms):
                runs[i].label = head + "".join(f", {k.split('.')[-1]}={arm[k]}" for k in varying
                                               if arm.get(k) is not None)
    groups: dict[str, list[RunData]] = defaultdict(list)
    for run in runs:
        groups[run.label].append(run)
    return dict(sorted(groups.items()))
