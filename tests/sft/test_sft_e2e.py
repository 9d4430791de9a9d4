"""``experiment=sft_tiny`` end to end: Hydra config -> metis.train -> HF export -> sampled format."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sft_test_util import one_thread_when_busy

ROOT = Path(__file__).resolve().parents[2]


def read_losses(run_dir: Path) -> list[float]:
    rows = list(csv.DictReader(open(next(run_dir.glob("csv/version_*/metrics.csv")))))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def test_sft_tiny_config_trains_in_process(tiny_cache, tmp_path):
    """A few steps of the real experiment config (default tiny sizes): the loss drops, hf/ is written."""
    from metis.train import train

    overrides = ["experiment=sft_tiny", "logger=csv", f"paths.cache_dir={tiny_cache}", "trainer.max_steps=12",
                 "trainer.val_check_interval=12", "data.source.n=32", "data.batch_size=4", "module.warmup_steps=2", "module.lr=5e-3",
                 "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128", "model.tiny.num_hidden_layers=2",
                 "callbacks.progress.refresh_rate=0", f"hydra.run.dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    cfg.paths.output_dir = str(tmp_path)
    assert cfg.module._target_ == "metis.modules.sft.SFTModule" and "tools" not in cfg and "rollout" not in cfg
    with one_thread_when_busy():
        metrics = train(cfg)
    losses = read_losses(tmp_path)
    print("losses", [round(x, 2) for x in losses])
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert "val/loss" in metrics and (tmp_path / "hf" / "config.json").exists()


def test_sft_8b_config_is_the_gpu_recipe():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=sft_8b"])
    assert cfg.model.name_or_path == "Qwen/Qwen3-VL-8B-Instruct" and cfg.model.gradient_checkpointing
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"  # fp32 masters, bf16 compute
    assert cfg.model.dtype == "float32"
    assert cfg.trainer.use_distributed_sampler is False  # the SFT batch sampler shards by rank itself
    assert cfg.data._target_ == "metis.data.sft.SFTDataModule" and 5e-6 <= cfg.module.lr <= 2e-5


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_sft_tiny_learns_the_format(tmp_path):
    """The full experiment (a few CPU minutes), then rollouts through AgentLoop + HFEngine."""
    from metis.models import build_policy
    from sft_sampling import sample_metrics

    env = {**os.environ, "METIS_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline"}
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-m", "metis.train", "experiment=sft_tiny", "logger=csv",
                          "callbacks.progress.refresh_rate=0", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = read_losses(tmp_path / "run")
    first, last = sum(losses[:10]) / 10, sum(losses[-20:]) / 20
    print(f"sft_tiny loss {first:.3f} -> {last:.3f} over {len(losses)} steps")
    assert last < 0.1 * first and last < 0.8
    torch.manual_seed(0)
    model, processor = build_policy(name_or_path=str(tmp_path / "run" / "hf"), dtype="float32",
                                    attn_implementation="sdpa")
    with one_thread_when_busy():
        greedy = sample_metrics(model, processor, n_tasks=32, greedy=True)
        sampled = sample_metrics(model, processor, n_tasks=32)
    print("greedy", greedy, "\nsampled", sampled)
    # measured: greedy 1.0; sampled at T=1 0.50-0.70 (the 1 M-parameter model loses the thread after
    # high-entropy digits); the bar is set well below that
    assert greedy["format_rate"] >= 0.9 and sampled["format_rate"] >= 0.4
    assert greedy["tool_call_rate_needed"] >= 0.8  # the cold start is trigger-happy, as intended


def test_sft_parquet_config_reads_a_local_copy(tiny_policy, tmp_path):
    """data=sft_parquet with a local path (what sft_8b uses, here on the tiny processor)."""
    import hydra

    from metis.data.schema import save_records
    from metis.data.sft_synthetic import make_sft_records

    _, processor = tiny_policy
    records = make_sft_records(8, seed=4)
    for rec in records:  # foreign system prompts are replaced by the Metis one (system_prompt: metis)
        rec.messages[0]["content"] = [{"type": "text", "text": "You are DeepEyes."}]
    save_records(records, tmp_path / "cold")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=sft_8b", f"data.source={tmp_path / 'cold'}",
                                                       "data.num_workers=0", "data.val_fraction=0.25"])
    dm = hydra.utils.instantiate(cfg.data, processor=processor)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (6, 2)
    batch = next(iter(dm.train_dataloader()))
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert "You are an efficient problem-solving agent" in text and "DeepEyes" not in text
