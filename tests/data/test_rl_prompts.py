"""data=metis_rl: verl-layout RL prompts read lazily, bad rows skipped and counted, seeded splits,
per-source verifiers, and the real CLI on a written parquet (prompts reach the rollouts,
per-source curves reach the W&B history)."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from rl_rows import png, rl_rows, row, write_rl_parquet

from metis.data.samples import SampleSource
from metis.data.rl_prompts import RLPromptDataModule
from metis.utils.wandb_offline import read_history

ROOT = Path(__file__).resolve().parents[2]
ROUTES = {"*math*": "math", "*choice*": "multiple_choice", "fvqa_search": "exact"}


def truncated_png() -> bytes:
    """A PNG whose header reads but whose pixels do not decode (passes the scan, fails at draw)."""
    img = Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()[:400]


def test_rows_are_scanned_without_decoding_and_decoded_per_draw(tmp_path, monkeypatch, caplog):
    rows = rl_rows() + [row(40, "geo_math", "math", "Truncated image", "1", [truncated_png()])]
    path = write_rl_parquet(tmp_path / "rl.parquet", rows)
    loads: list[int] = []
    real_load = SampleSource.load
    monkeypatch.setattr(SampleSource, "load", lambda self, i: loads.append(i) or real_load(self, i))
    dm = RLPromptDataModule(str(path), val_size=3, seed=1, verifiers={"*math*": "math", "*choice*": "multiple_choice"},
                            default_verifier="exact")
    with caplog.at_level("WARNING"):
        dm.setup()
    assert loads == []  # the start-up scan keeps row indices only: no image is decoded
    train, val = dm.splits["train"], dm.splits["val"]
    assert len(train) + len(val) == 13 and len(val) == 3  # 15 rows - corrupt - mismatch
    assert dm.skipped == {"corrupt_image": 1, "image_mismatch": 1}
    assert sum("image_mismatch" in r.message for r in caplog.records) == 1
    assert any("fvqa_search" in r.message and "default_verifier=exact" in r.message for r in caplog.records)
    # the same seed gives the same split
    again = RLPromptDataModule(str(path), val_size=3, seed=1)
    again.setup()
    assert again.splits["val"].indices == val.indices
    tasks = list(train) + list(val)  # draws decode; the truncated row is replaced by the next of its split
    assert len(tasks) == 13 and len(loads) == 14 and dm.skipped["corrupt_image"] == 2
    _ = list(train) + list(val)  # a second epoch: the undecodable row is not counted again
    assert dm.skipped["corrupt_image"] == 2
    assert dm.metrics()["data/skipped_rows"] == 3.0
    by_source = {t.data_source: t for t in tasks}
    assert {s: t.verifier for s, t in by_source.items()} == {"geo_math": "math", "chart_mc": "multiple_choice",
                                                             "fvqa_search": "exact"}
    mc = by_source["chart_mc"]
    assert len(mc.images) == 2 and mc.question.count("<image>") == 2 and mc.images[0].size == (32, 32)
    assert mc.content()[0] == {"type": "image"}
    assert mc.meta["extra_info"]["pass8"] == 0.5 and mc.meta["extra_info"]["split"] == "train"  # unknown keys kept
    assert mc.meta["index"] == int(mc.id) and "system_prompt" not in mc.meta
    row_mode = RLPromptDataModule(str(path), val_size=0, system_prompt="row")
    row_mode.setup()
    assert row_mode.splits["train"][0].meta["system_prompt"] == "You are a helpful assistant."


def test_missing_source_names_the_key_and_the_hub_id(tmp_path):
    with pytest.raises(ValueError, match=r"data\.source.*Accio-Lab/Metis-RL"):
        RLPromptDataModule(None)
    with pytest.raises(FileNotFoundError, match=r"data\.source"):
        RLPromptDataModule(str(tmp_path / "missing.parquet")).setup()


def test_a_folder_of_parquet_files_is_one_prompt_set(tmp_path):
    rows = rl_rows()
    write_rl_parquet(tmp_path / "d" / "part-0.parquet", rows[:6])
    write_rl_parquet(tmp_path / "d" / "part-1.parquet", rows[6:])
    dm = RLPromptDataModule(str(tmp_path / "d"), val_size=2)
    dm.setup()
    assert len(dm.splits["train"]) == 10 and dm.skipped == {"corrupt_image": 1, "image_mismatch": 1}


@pytest.mark.timeout(900)  # about a minute of CPU; the margin is for a loaded machine
def test_cli_trains_on_rl_prompts_with_per_source_curves(tmp_path):
    path = write_rl_parquet(tmp_path / "rl.parquet")
    env = dict(os.environ, METIS_CACHE=str(tmp_path / "cache"), WANDB_MODE="offline")
    out = subprocess.run([sys.executable, "-m", "metis.train", "experiment=hdpo_tiny", "data=metis_rl",
                          f"data.source={path}", "trainer.max_steps=2", "data.val_size=2", "rollout.n=2",
                          "+data.verifiers.fvqa_search=exact", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "run"
    rollouts = [json.loads(x) for x in (run_dir / "rollouts" / "train.jsonl").read_text().splitlines()]
    prompts = {r["prompt"][1]["content"] for r in rl_rows()[:12]}
    assert rollouts and all(r["question"] in prompts for r in rollouts), "prompts must reach the rollouts"
    assert all(r["scored"] and r["data_source"] in ("geo_math", "chart_mc", "fvqa_search") for r in rollouts)
    assert {r["verifier"] for r in rollouts} <= {"math", "multiple_choice", "exact"}
    history = read_history(next((run_dir / "wandb").glob("offline-run-*")))
    keys = set().union(*history)
    seen = {r["data_source"] for r in rollouts}
    for source in seen:
        for metric in ("accuracy", "tool_call_rate", "mean_tool_calls"):
            assert f"train/source/{source}/{metric}" in keys
    skipped = [row["data/skipped_rows"] for row in history if "data/skipped_rows" in row]
    assert skipped and skipped[-1] == 2.0
