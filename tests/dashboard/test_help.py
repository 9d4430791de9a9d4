"""`--help` of each Hydra entry point lists only the config groups it composes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from metis.utils.hydra_help import format_groups, group_options

ROOT = Path(__file__).resolve().parents[2]


def test_format_groups_lists_the_chosen_groups_with_options():
    text = format_groups({"model": "tiny", "reward": None, "hydra/launcher": "basic", "hydra": "default"})
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].startswith("model: ") and "qwen3_vl_8b" in lines[0]
    assert lines[0].endswith("(now: tiny)") and lines[1].endswith("(now: none)")
    assert "miniature/grpo" in group_options("experiment")


def groups_of(entry: str) -> set[str]:
    out = subprocess.run([sys.executable, "-m", entry, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    section = out.stdout.split("== Configuration groups")[1].split("== Config ")[0]
    return {line.split(":")[0] for line in section.splitlines()[1:] if ":" in line}


def test_train_and_evaluate_help_show_their_own_groups():
    train = groups_of("metis.train")
    assert {"model", "reward", "experiment", "trainer"} <= train and not {"benchmark", "stage", "sim"} & train
    evaluate = groups_of("metis.evaluate")
    assert "benchmark" in evaluate and not {"reward", "experiment", "stage", "sim"} & evaluate
