"""Every experiment file composes with the real configs; the 8B one without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import CONF, ROOT, compose_cfg
from omegaconf import OmegaConf

EXPERIMENTS = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment, tmp_path):
    cfg = compose_cfg(f"experiment={experiment}", f"hydra.run.dir={tmp_path}")
    cfg.paths.output_dir = str(tmp_path)  # hydra:runtime is only set inside a real run
    OmegaConf.resolve(cfg)
    assert cfg.experiment_name not in (None, "default")  # every experiment names its runs
    for key in ("model", "module", "data", "trainer"):
        assert "_target_" in cfg[key], f"{experiment}: {key} has no _target_"


def test_bare_default_is_hdpo_from_the_shipped_cold_start(tmp_path):
    cfg = compose_cfg(f"hydra.run.dir={tmp_path}", experiment=None)  # what a bare `python -m metis.train` composes
    cfg.paths.output_dir = str(tmp_path)  # hydra:runtime is only set inside a real run
    OmegaConf.resolve(cfg)
    assert cfg.experiment_name == "marker_hdpo" and cfg.trainer.accelerator == "cpu"
    assert cfg.reward.name == "hdpo" and cfg.reward.w_tool == 0.15 and cfg.trainer.max_steps == 48
    assert cfg.model.init_from == str(ROOT / "metis" / "assets" / "coldstart_marker")
    tiny = compose_cfg()  # the tests' tiny setting
    assert tiny.experiment_name == "rl_tiny_hdpo" and tiny.model.tiny is not None  # run names carry the scheme


def test_hdpo_8b_carries_the_papers_hyperparameters():
    cfg = compose_cfg("experiment=hdpo_8b")
    assert cfg.model.name_or_path == "Qwen/Qwen3-VL-8B-Instruct"
    assert cfg.rollout.n == 16 and cfg.data.prompts_per_step == 128
    assert cfg.module.minibatch_prompts == 64 and cfg.module.lr == 1e-6 and cfg.module.ppo_epochs == 1
    assert cfg.rollout.engine.temperature == 1.0 and cfg.rollout.engine.top_p == 1.0
    assert cfg.rollout.loop.max_turns == 10 and cfg.rollout.loop.max_response_tokens == 16384
    assert cfg.reward.w_acc == 1.0 and cfg.reward.w_tool == 0.15
    assert cfg.loss.clip_low == 0.2 and cfg.loss.clip_high == 0.2 and cfg.loss.dual_clip == 3.0
    assert cfg.loss.kl_coef == 0.0 and cfg.loss.entropy_coef == 0.0


def test_cli_prints_full_8b_config_without_gpu():
    out = subprocess.run([sys.executable, "-m", "metis.train", "experiment=hdpo_8b", "--cfg", "job"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = OmegaConf.create(out.stdout)
    assert cfg.model.name_or_path == "Qwen/Qwen3-VL-8B-Instruct" and cfg.trainer.accelerator == "gpu"


@pytest.mark.parametrize("experiment", ["hdpo_8b", "hdpo_8b_lora"])
def test_8b_experiments_without_data_stop_naming_the_key(experiment):
    """They validate without a GPU once given data, search and a judge (tests/config/test_dry_run_rl.py)."""
    env = {k: v for k, v in os.environ.items() if k != "METIS_RL_DATA"}
    out = subprocess.run([sys.executable, "-m", "metis.train", f"experiment={experiment}", "dry_run=true"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "data.source is not set" in out.stderr and "Accio-Lab/Metis-RL" in out.stderr


def test_bad_config_fails_at_startup_naming_the_key():
    out = subprocess.run([sys.executable, "-m", "metis.train", "experiment=hdpo_tiny", "reward.w_tool=-1", "dry_run=true"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "w_tool" in out.stderr
    out = subprocess.run([sys.executable, "-m", "metis.train", "experiment=hdpo_tiny", "reward=grpo", "+reward.alpha=0.5", "dry_run=true"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "alpha" in out.stderr
    out = subprocess.run([sys.executable, "-m", "metis.train", "experiment=hdpo_tiny", "rollout.n=0", "dry_run=true"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "rollout.n" in out.stderr


@pytest.mark.parametrize("overrides", [["reward=grpo"], ["reward=coupled", "reward.alpha=0.5"]])
def test_the_readme_scheme_swap_works_on_the_bare_default(overrides):
    """`python -m metis.train reward=<scheme>`: the default experiment sets nothing scheme-specific."""
    from hydra.utils import instantiate

    cfg = compose_cfg(*overrides, experiment=None, return_hydra_config=False)
    scheme = instantiate(cfg.reward)
    assert scheme.describe()["name"] == overrides[0].split("=")[1]
