"""FSDP2 (ModelParallelStrategy, 2 CPU processes) trains like the single-process run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent / "fsdp_parity_run.py"


def run(world: int, tmp_path: Path, cache: str) -> dict:
    out = tmp_path / f"world{world}.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(world), str(out), cache], capture_output=True,
                          text=True, timeout=300, cwd=SCRIPT.parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.timeout(600)
def test_fsdp2_two_processes_match_single_process(tmp_path, tiny_cache):
    single = run(1, tmp_path, f"{tiny_cache}/tiny")
    sharded = run(2, tmp_path, f"{tiny_cache}/tiny")
    assert sharded["sharded"].startswith("FSDP")  # fully_shard swapped the class
    for key in ("train/loss/acc", "train/loss/tool", "train/loss/total", "train/accuracy", "train/rho_Q"):
        assert sharded["metrics"][key] == pytest.approx(single["metrics"][key], rel=1e-4, abs=1e-6), key
    assert sharded["weights"].keys() == single["weights"].keys()
    for name, value in single["weights"].items():
        assert sharded["weights"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    # the export of the sharded run is a plain HF directory with the same weights
    from safetensors.torch import load_file

    one, two = (load_file(tmp_path / f"world{w}.hf{w}" / "model.safetensors") for w in (1, 2))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=1e-5), name
