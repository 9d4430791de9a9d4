"""The SLURM scripts and configs without a cluster (part of the default test run): sweep files
compose, submit_sweep.sh counts runs, the array script builds the right command for an index,
train.sbatch picks trainer/devices/resume, and the submitit launcher config resolves."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.txt"))
SCRIPTS = ["slurm/local_cluster.sh", "slurm/submit_sweep.sh", "slurm/sweep_array.sbatch", "slurm/train.sbatch",
           "slurm/lib.sh"]


def _runs(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _fake_bin(tmp_path: Path, *names: str) -> Path:
    """`sbatch`/`srun` stand-ins that print their argv, one argument a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in names:
        exe = bin_dir / name
        exe.write_text(f'#!/bin/sh\necho "{name}"\nfor a in "$@"; do echo "$a"; done\n')
        exe.chmod(0o755)
    return bin_dir


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(PATH=f"{_fake_bin(tmp_path, 'sbatch', 'srun')}:{env['PATH']}", METIS_RUNS=str(tmp_path / "runs"),
               METIS_ROOT=str(ROOT), **extra)
    for key in ("GPUS_PER_NODE", "TRAINER", "EXPERIMENT", "RUN_DIR", "RESUME", "SWEEP_NAME", "MAX_PARALLEL"):
        env.pop(key, None)
    env.update(extra)
    return env


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("sweep", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_sweep_line_composes(sweep):
    lines = _runs(sweep)
    assert lines
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for i, line in enumerate(lines):
            cfg = compose("config", overrides=[f"group={sweep.stem}", f"tags=[{sweep.stem},{sweep.stem}-{i}]",
                                               f"experiment_name={sweep.stem}-{i}", "trainer=cpu",
                                               "++trainer.num_nodes=1", "++trainer.devices=1", *line.split()])
            own_tags = next((t for t in line.split() if t.startswith("tags=")), None)  # a line may tag its arm
            expected = own_tags[len("tags=["):-1].split(",") if own_tags else [sweep.stem, f"{sweep.stem}-{i}"]
            assert cfg.group == sweep.stem and list(cfg.tags) == expected
            assert cfg.logger.group == sweep.stem and list(cfg.logger.tags) == list(cfg.tags)  # W&B gets them


def test_reward_sweep_covers_the_schemes():
    lines = _runs(ROOT / "experiments" / "sweeps" / "reward_schemes_tiny.txt")
    arms = {" ".join(w for w in ln.split() if not w.startswith(("seed=", "experiment="))) for ln in lines}
    assert arms == {"reward=grpo", "reward=coupled reward.alpha=0.05", "reward=coupled reward.alpha=0.15",
                    "reward=coupled reward.alpha=0.5", "reward=coupled_penalty", "reward=normalize_then_sum",
                    "reward=hdpo reward.w_tool=0.10", "reward=hdpo reward.w_tool=0.15", "reward=hdpo reward.w_tool=0.20"}
    assert {w for ln in lines for w in ln.split() if w.startswith("seed=")} == {"seed=0", "seed=1"}


def test_submit_sweep_counts_runs_and_passes_sbatch_args_and_overrides(tmp_path):
    sweep = tmp_path / "my sweep.txt"
    sweep.write_text("# comment\n\nreward=grpo seed=0\n  # indented comment\nreward=hdpo seed=1\nreward=hdpo seed=2\n")
    out = subprocess.run([str(ROOT / "slurm" / "submit_sweep.sh"), str(sweep), "-p", "cpu", "--wait", "--",
                          "trainer.max_steps=1"], env=_env(tmp_path, MAX_PARALLEL="2"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    assert argv[0] == "sbatch" and "--array=0-2%2" in argv and f"--chdir={ROOT}" in argv
    assert "--job-name=sweep-my_sweep" in argv
    assert f"--output={tmp_path}/runs/sweeps/my_sweep/slurm-%A_%a.out" in argv
    script = argv.index(str(ROOT / "slurm" / "sweep_array.sbatch"))
    assert argv[script - 3:script] == ["-p", "cpu", "--wait"]  # user's sbatch args last: they win
    assert argv[script + 1:] == [str(sweep), "trainer.max_steps=1"]
    # an explicit --array replaces the computed one
    out = subprocess.run([str(ROOT / "slurm" / "submit_sweep.sh"), str(sweep), "--array=1"], env=_env(tmp_path),
                         capture_output=True, text=True)
    assert [a for a in out.stdout.splitlines() if a.startswith("--array")] == ["--array=1"]


def test_sweep_array_builds_the_command_of_its_index(tmp_path):
    sweep = tmp_path / "abc.txt"
    sweep.write_text("# header\nreward=grpo seed=0\n\nreward=coupled reward.alpha=0.5 'seed=3'  # trailing comment\n")
    env = _env(tmp_path, SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_JOB_ID="77", SLURM_JOB_ID="78",
               SLURM_NNODES="1", SLURM_NTASKS="1", SLURM_CPUS_PER_TASK="1", PYTHON="python3")
    out = subprocess.run(["bash", str(ROOT / "slurm" / "sweep_array.sbatch"), str(sweep), "trainer.max_steps=1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    run_dir = f"{tmp_path}/runs/sweeps/abc/1"
    assert argv == ["srun", "--kill-on-bad-exit=1", "python3", "-m", "metis.train", f"hydra.run.dir={run_dir}",
                    "group=abc", "tags=[abc,abc-1]", "experiment_name=abc-1", "trainer=cpu",
                    "++trainer.num_nodes=1", "++trainer.devices=1",
                    "reward=coupled", "reward.alpha=0.5", "seed=3", "trainer.max_steps=1"]
    # a requeued task resumes (from the newest complete checkpoint, picked in Python) once one is complete
    (Path(run_dir) / "checkpoints").mkdir(parents=True)
    (Path(run_dir) / "checkpoints" / "last.ckpt").write_text("x")
    out = subprocess.run(["bash", str(ROOT / "slurm" / "sweep_array.sbatch"), str(sweep)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert not any(a.startswith("ckpt_path=") for a in out.stdout.splitlines())  # no marker: incomplete
    (Path(run_dir) / "checkpoints" / "last.ckpt.complete").write_text('{"global_step": 1}')
    out = subprocess.run(["bash", str(ROOT / "slurm" / "sweep_array.sbatch"), str(sweep)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert "ckpt_path=last" in out.stdout.splitlines()
    # an index past the end fails clearly
    env["SLURM_ARRAY_TASK_ID"] = "2"
    out = subprocess.run(["bash", str(ROOT / "slurm" / "sweep_array.sbatch"), str(sweep)], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "has no run 2 (it has 2)" in out.stderr


@pytest.mark.parametrize("gpus,expected", [
    ("8", ["experiment=hdpo_8b", "++trainer.num_nodes=2", "++trainer.devices=8"]),
    ("0", ["experiment=hdpo_8b", "trainer=cpu", "++trainer.num_nodes=2", "++trainer.devices=8"]),
])
def test_train_sbatch_sets_trainer_sizes_from_slurm(tmp_path, gpus, expected):
    env = _env(tmp_path, SLURM_JOB_ID="123", SLURM_JOB_NAME="metis-train", SLURM_NNODES="2",
               SLURM_NTASKS_PER_NODE="8", SLURM_NTASKS="16", SLURM_GPUS_PER_NODE=f"h100:{gpus}", PYTHON="python3")
    out = subprocess.run(["bash", str(ROOT / "slurm" / "train.sbatch"), "seed=3"], cwd=tmp_path, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    run_dir = f"{tmp_path}/runs/slurm/metis-train_123"
    assert argv[:5] == ["srun", "--kill-on-bad-exit=1", "python3", "-m", "metis.train"]
    assert argv[5:] == [expected[0], f"hydra.run.dir={run_dir}", *expected[1:], "seed=3"]


def test_submitit_launcher_config_resolves(monkeypatch):
    for key in ("PARTITION", "NODES", "GPUS_PER_NODE", "TASKS_PER_NODE", "CPUS_PER_TASK", "MEM_GB", "TIMEOUT_MIN"):
        monkeypatch.delenv(key, raising=False)
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=submitit_slurm_metis"], return_hydra_config=True)
        launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
        assert launcher["_target_"].endswith("SlurmLauncher")
        resolved = {k: OmegaConf.select(cfg, f"hydra.launcher.{k}") for k in
                    ("partition", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min")}
        assert resolved == {"partition": None, "nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1,
                            "cpus_per_task": 1, "mem_gb": None, "timeout_min": 240}
        assert all(isinstance(s, str) for s in cfg.hydra.launcher.setup)  # a YAML mapping here breaks sbatch
        monkeypatch.setenv("GPUS_PER_NODE", "8")
        monkeypatch.setenv("PARTITION", "gpu")
        assert cfg.hydra.launcher.gpus_per_node == 8 and cfg.hydra.launcher.partition == "gpu"
