"""A file with one bad row of each kind trains (``experiment=sft_tiny data=sft_parquet
data.source=<file>``) and curates (``stage=reexecute``) to completion, every skip counted by reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from public_layouts import BAD_KINDS, write_bad_rows_sample
from sft_test_util import one_thread_when_busy

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_a_file_with_bad_rows_trains_and_curates(tiny_cache, tmp_path):
    from metis.curate import curate
    from metis.train import train

    sample = write_bad_rows_sample(tmp_path / "data")
    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=sft_tiny", "data=sft_parquet", f"data.source={sample}", "data.max_skipped_fraction=0.5",
            f"data.skipped_rows_file={run}/skipped_rows.jsonl", "data.num_workers=0", "data.val_fraction=0.0",
            "logger=csv", f"paths.cache_dir={tiny_cache}", "trainer.max_steps=2", "trainer.val_check_interval=2",
            "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.num_hidden_layers=2",
            "callbacks.progress.refresh_rate=0", f"hydra.run.dir={run}"])
    cfg.paths.output_dir = str(run)
    assert cfg.data.batch_size == 8 and cfg.data.batch_tokens is None
    with one_thread_when_busy():
        train(cfg)
    assert (run / "hf" / "config.json").exists()
    skipped = [json.loads(line)["reason"] for line in (run / "skipped_rows.jsonl").read_text().splitlines()]
    assert sorted(skipped) == sorted(k for k, n in BAD_KINDS.items() for _ in range(n))

    root = tmp_path / "curation"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        ccfg = compose(config_name="curate", overrides=[
            "stage=reexecute", f"root={root}", f"raw_sft={sample}", "max_skipped_fraction=0.5", "progress=false",
            f"paths.output_dir={root}/reexecute", "~logger", "tools.tools.0.pool_size=1"])
    report = curate(ccfg)
    assert report["status"] == "complete" and report["counts"]["kept"] == 13
    assert report["bad_input_by_kind"] == BAD_KINDS
    listed = (root / "reexecute" / "skipped_rows.jsonl").read_text().splitlines()
    assert len(listed) == sum(BAD_KINDS.values())
