"""CI-sized miniature reproduction: one HDPO arm (experiment=miniature/hdpo_w0.15) for two RL steps
from the random tiny model, through the real CLI; the held-out (val/*) and training metrics the
report plots must be logged to the offline W&B run and be finite. Also checks the sweep file."""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from metis.utils.wandb_offline import read_config, read_history

ROOT = Path(__file__).resolve().parents[2]
VAL = ["val/accuracy", "val/accuracy_tool_needed", "val/accuracy_tool_unneeded", "val/unnecessary_tool_rate",
       "val/necessary_tool_rate", "val/mean_tool_calls", "val/tool_call_rate"]
TRAIN = ["train/accuracy", "train/rho_Q", "train/efficiency_active_groups", "train/unnecessary_tool_rate",
         "train/necessary_tool_rate", "train/mean_tool_calls", "train/loss/tool"]


def test_marker_family_needs_the_tool_only_for_the_small_marker():
    """At the model's input (64x64, a 4x bicubic downscale) the large square is plain to see and
    the one-pixel marker is not even the most saturated pixel; the tool's program finds and zooms
    it on the full image in the real sandbox, and the zoom shows its colour."""
    import numpy as np
    from PIL import Image

    from metis.data.miniature import MARKER_CODE, MARKER_COLORS, marker_task
    from metis.tools import PythonTool, ToolBox

    rng = random.Random(3)
    hard = [marker_task(rng, True, i) for i in range(40)]
    easy = [marker_task(rng, False, i) for i in range(40)]
    assert {t.answer for t in hard} == set(MARKER_COLORS) and all(t.needs_tool and t.verifier == "exact" for t in hard)

    def spread(img):
        return np.ptp(np.asarray(img.resize((64, 64), Image.BICUBIC)).astype(int), 2)

    def marker_at(img):
        ys, xs = np.nonzero(np.ptp(np.asarray(img).astype(int), 2) > 150)
        return int(ys.mean()) // 4, int(xs.mean()) // 4

    found = sum(np.unravel_index(spread(t.images[0]).argmax(), (64, 64)) == marker_at(t.images[0]) for t in hard)
    assert found <= 4, f"the small marker is the most saturated input pixel in {found}/40 images"
    assert all(spread(t.images[0])[marker_at(t.images[0])] > 100 for t in easy)

    tool = PythonTool(timeout_s=20, pool_size=1, min_pixels=4096, max_pixels=4096)
    box = ToolBox([tool])
    try:
        for task in hard[:2] + easy[:1]:
            box.start(task.id, task.images)
            obs = box.execute(task.id, "python", {"code": MARKER_CODE})
            box.end(task.id)
            assert obs.error is None and len(obs.images) == 1, obs.text
            zoom = np.asarray(obs.images[0].convert("RGB")).astype(int)
            assert zoom.shape == (64, 64, 3)
            centre = zoom[36:44, 36:44].reshape(-1, 3).mean(0)  # the marker pixel, 16x enlarged
            assert np.abs(centre - MARKER_COLORS[task.answer]).max() < 40, (task.answer, centre)
    finally:
        tool.close()


def test_marker_sft_records_trigger_happy_and_no_tool_control():
    from metis.data.miniature import MARKER_CODE, make_sft_records

    happy = make_sft_records(n=64, families=["marker"], tool_fraction_unneeded=0.9, tool_fraction_needed=1.0)
    control = make_sft_records(n=64, families=["marker"], tool_fraction_unneeded=0.0, tool_fraction_needed=0.0)
    assert [r.source_id for r in happy] == [r.source_id for r in control]  # same samples
    for rec in happy:
        if rec.meta["used_tool"]:
            assert rec.messages[2]["tool_call"]["arguments"]["code"] == MARKER_CODE
            assert len(rec.images) == 2 and rec.images[1].size == (64, 64)  # input + the zoom
        assert rec.messages[-1]["content"][-1]["text"].endswith(f"<answer>{rec.final_answer}</answer>")
    needed = [r for r in happy if r.meta["needs_tool"]]
    unneeded = [r for r in happy if not r.meta["needs_tool"]]
    assert needed and all(r.meta["used_tool"] for r in needed)
    assert 0.75 <= sum(r.meta["used_tool"] for r in unneeded) / len(unneeded) < 1.0
    assert not any(r.meta["used_tool"] for r in control) and all(len(r.images) == 1 for r in control)


def test_answer_noise_relabels_that_share_with_another_colour_and_keeps_the_rest_unchanged():
    from metis.data.miniature import MARKER_COLORS, make_sft_records

    clean = make_sft_records(n=400, families=["marker"])
    noisy = make_sft_records(n=400, families=["marker"], answer_noise=0.5)
    assert [r.source_id for r in clean] == [r.source_id for r in noisy]
    flipped = [(c, r) for c, r in zip(clean, noisy) if r.meta.get("noisy_answer")]
    assert 0.4 <= len(flipped) / len(noisy) <= 0.6
    for c, r in zip(clean, noisy):
        assert r.ground_truth == c.ground_truth == [c.final_answer]       # the truth is kept
        assert r.meta["used_tool"] == c.meta["used_tool"]                 # same tool-use mix
        if r.meta.get("noisy_answer"):
            assert r.final_answer != c.final_answer and r.final_answer in MARKER_COLORS
            assert r.messages[-1]["content"][-1]["text"].endswith(f"<answer>{r.final_answer}</answer>")
            if r.meta["used_tool"]:  # the call and its observation stay true: same code, same zoom
                assert r.messages[2] == c.messages[2] and r.images[1].tobytes() == c.images[1].tobytes()
        else:
            assert r.messages == c.messages
    assert len({r.final_answer for _, r in flipped}) == len(MARKER_COLORS)  # every colour is drawn
    with pytest.raises(ValueError, match="answer_noise"):
        make_sft_records(n=4, families=["marker"], answer_noise=1.5)


def test_sweep_file_has_every_arm_three_seeds():
    lines = [ln for ln in (ROOT / "experiments/sweeps/miniature.txt").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    arms = {ln.split()[0].split("/")[1] for ln in lines}
    assert len(arms) == 9 and len(lines) == 27
    for arm in arms:
        assert (ROOT / f"conf/experiment/miniature/{arm}.yaml").exists()


def test_ci_sized_hdpo_arm_logs_finite_metrics(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline")  # the shared tiny tokenizer cache (built once)
    env.pop("METIS_MINIATURE_SFT", None)
    out = subprocess.run(
        [sys.executable, "-m", "metis.train", f"hydra.run.dir={tmp_path / 'run'}", "experiment=miniature/hdpo_w0.15",
         "model.init_from=null", "trainer.max_steps=2", "trainer.val_check_interval=1", "data.val_prompts=4",
         "data.prompts_per_step=2", "rollout.n=2", "rollout.loop.max_new_tokens=12", "rollout.loop.max_turns=2",
         "callbacks.progress.refresh_rate=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = next((tmp_path / "run" / "wandb").glob("offline-run-*"))
    history = read_history(run)
    keys = set().union(*history)
    missing = [k for k in VAL + TRAIN if k not in keys]
    assert not missing, f"not logged: {missing}"
    for key in VAL + TRAIN:
        values = [row[key] for row in history if key in row]
        assert values and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), (key, values)
    assert [row["train/rl_step"] for row in history if "train/rl_step" in row] == [1.0, 2.0]
    config = read_config(run)
    assert config["reward"]["name"] == "hdpo" and config["reward"]["w_tool"] == 0.15
    assert config["group"] == "miniature" and "hdpo_w0.15" in config["tags"]


def test_the_committed_calibration_follows_from_its_committed_samples():
    """experiments/miniature/calibration.json: every candidate's gate numbers recomputed from its
    calibration/<name>.csv, and the choice is the first candidate that passes in the rules' order (or none)."""
    import importlib.util
    import json
    import math

    from metis.analysis.gate import gate_metrics, gate_verdict

    here = Path(__file__).resolve().parents[2] / "experiments" / "miniature"
    spec = importlib.util.spec_from_file_location("calibrate", here / "calibrate.py")
    calibrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibrate)
    record = json.loads((here / "calibration.json").read_text())
    assert [c["name"] for c in record["candidates"]][:len(calibrate.CANDIDATES)] == \
        [calibrate.parse_candidate(c)[2] for c in calibrate.CANDIDATES][:len(record["candidates"])]  # the rules' order
    for cand in record["candidates"]:
        samples = calibrate.read_samples(here / "calibration" / f"{cand['name']}.csv")
        assert len(samples) == record["prompts"] * record["samples_per_prompt"]
        m = gate_metrics(samples, cand["metrics"]["no_tool_guess"])
        for key, value in cand["metrics"].items():
            assert math.isclose(m[key], value, rel_tol=1e-9), (cand["sft_steps"], key)
        assert gate_verdict(m) == cand["gate"]
    passing = [c["name"] for c in record["candidates"] if c["gate"]["passed"]]
    assert record["chosen"] == (passing[0] if passing else None)


def test_every_calibration_candidate_composes_and_builds_its_sft_data():
    """Each candidate's overrides (calibrate.DATA_VARIANTS) compose on experiment=miniature_sft and
    reach make_sft_records: a candidate that cannot start is found here, not after the earlier ones trained."""
    import importlib.util

    from hydra.utils import instantiate

    from tests.helpers import compose_cfg

    here = Path(__file__).resolve().parents[2] / "experiments" / "miniature"
    spec = importlib.util.spec_from_file_location("calibrate", here / "calibrate.py")
    calibrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibrate)
    for cand in calibrate.CANDIDATES:
        steps, variant, _ = calibrate.parse_candidate(cand)
        cfg = compose_cfg("experiment=miniature_sft", f"trainer.max_steps={steps}", *calibrate.DATA_VARIANTS[variant],
                          "data.source.n=64")
        records = instantiate(cfg.data.source)
        records = records() if callable(records) else records  # a _partial_ source
        assert len(records) == 64 and cfg.trainer.max_steps == steps
        noisy = sum(bool(r.meta.get("noisy_answer")) for r in records)
        assert (noisy > 0) == variant.startswith("noise"), cand


def test_calibrate_reuse_failed_regates_committed_samples_without_training(tmp_path):
    """decide.sh's `calibrate.py --reuse-failed`: candidates the record shows failing are re-gated from
    their committed samples (no training: nothing appears under --out/calib), with the record's numbers."""
    import importlib.util
    import json
    import shutil

    here = Path(__file__).resolve().parents[2] / "experiments" / "miniature"
    spec = importlib.util.spec_from_file_location("calibrate", here / "calibrate.py")
    calibrate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibrate)
    shutil.copy(here / "calibration.json", tmp_path / "calibration.json")
    shutil.copytree(here / "calibration", tmp_path / "calibration")
    committed = json.loads((here / "calibration.json").read_text())
    failed = [c for c in committed["candidates"] if not c["gate"]["passed"]][:2]
    specs = [f"{c['sft_steps']}" + (f":{c['name'].split('_', 2)[2]}" if c["name"].count("_") > 1 else "") for c in failed]
    rc = calibrate.main(["--candidates", *specs, "--reuse-failed", "--record", str(tmp_path / "calibration.json"),
                         "--out", str(tmp_path / "out")])
    assert rc == 1  # none of them passes: no RL would follow
    assert not (tmp_path / "out" / "calib").exists()  # nothing was trained or sampled
    record = json.loads((tmp_path / "calibration.json").read_text())
    assert [c["name"] for c in record["candidates"]] == [c["name"] for c in failed]
    for new, old in zip(record["candidates"], failed):
        assert new["reused"] and new["metrics"] == old["metrics"] and new["gate"] == old["gate"]
