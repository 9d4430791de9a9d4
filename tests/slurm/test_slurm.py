"""The SLURM path end to end on a real single-node cluster started on this machine.

Run with ``python -m pytest -q -m slurm`` (excluded from the default run). Needs root and Debian's
slurm-wlm + munge (``slurm/local_cluster.sh install`` apt-installs them when missing). The
cluster lives in a temporary directory on free loopback ports, so a developer's own local cluster
(slurm/local_cluster.sh start) can keep running beside it.

Every wait on SLURM is bounded: without accounting (sacct) nothing reports a job that died
before writing its result, so a timed-out test cancels its jobs and fails instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from metis.utils.wandb_offline import read_config, read_history, read_records

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "slurm" / "local_cluster.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            key, value = line[len("export "):].split("=", 1)
            env[key] = value
    return env


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"<no {path}>"


class Cluster:
    def __init__(self, env: dict[str, str], tmp: Path):
        self.env, self.tmp = env, tmp
        self.runs = Path(env["METIS_RUNS"])

    def run(self, *cmd: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, cwd=kw.pop("cwd", ROOT), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def jobs(self) -> list[str] | None:
        """Job ids in the queue (requeued ones included); None when squeue did not answer."""
        out = self.run("squeue", "-h", "-o", "%A", "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED,REQUEUED")
        return out.stdout.split() if out.returncode == 0 else None

    def cancel_all(self) -> None:
        jobs = self.jobs()
        if jobs:
            self.run("scancel", *jobs)

    def wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.jobs() == []:  # not None: a squeue that failed says nothing
                return True
            time.sleep(1)
        return False

    def logs(self) -> str:
        d = Path(self.env["METIS_SLURM_DIR"]) / "log"
        return "\n".join(f"--- {p.name}\n{_tail(p, 30)}" for p in sorted(d.glob("*.log")))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the local SLURM cluster needs Linux")
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (it runs slurmctld/slurmd as root and munged as munge)")
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        if shutil.which("apt-get") is None:
            pytest.skip("slurm-wlm/munge are not installed and there is no apt-get to install them")
        out = subprocess.run(["bash", str(CLUSTER), "install"], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            pytest.skip(f"could not apt-get install slurm-wlm munge: {out.stderr[-1500:]}")

    tmp = tmp_path_factory.mktemp("slurm")
    # the daemons' dir must be reachable by the munge user (pytest's tmp dirs are 0700)
    sdir = Path(tempfile.mkdtemp(prefix="metis-slurm-test-", dir="/tmp"))
    sdir.chmod(0o755)
    env = dict(os.environ, METIS_SLURM_DIR=str(sdir), METIS_SLURM_CTLD_PORT=str(_free_port()),
               METIS_SLURM_SLURMD_PORT=str(_free_port()))
    out = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(sdir, ignore_errors=True)
        pytest.fail(f"local SLURM cluster did not start:\n{out.stdout}\n{out.stderr}")
    env.update(_read_env_file(sdir / "env"))
    cache = tmp / "cache"
    env.update(METIS_RUNS=str(tmp / "runs"), METIS_CACHE=str(cache), PYTHON=sys.executable, METIS_ROOT=str(ROOT),
               WANDB_MODE="offline", WANDB_SILENT="true", TOKENIZERS_PARALLELISM="false")
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SLURM_JOB_ID", "SLURM_NTASKS"):
        env.pop(key, None)  # the jobs set their own threads; never look like a job ourselves
    # Build the tiny model once: concurrent jobs building it into one empty cache would race.
    build = subprocess.run(
        [sys.executable, "-c",
         "import sys; from omegaconf import OmegaConf; from metis.models.tiny import build_tiny; "
         "t = OmegaConf.to_container(OmegaConf.load('conf/model/tiny.yaml').tiny); "
         "print(build_tiny(sys.argv[1], **t))", str(cache / "tiny")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    cluster = Cluster(env, tmp)
    try:
        assert build.returncode == 0, build.stderr[-3000:]
        yield cluster
    finally:
        cluster.cancel_all()
        subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(sdir, ignore_errors=True)


def _wandb_run(run_dir: Path) -> Path:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no W&B offline run under {run_dir}"
    return runs[-1]


def _run_record(wandb_run: Path):
    return next(r.run for r in read_records(wandb_run) if r.WhichOneof("record_type") == "run")


@pytest.mark.timeout(600)
def test_sweep_array_runs_every_line_with_wandb_grouped_by_sweep(slurm_cluster):
    c = slurm_cluster
    t0 = time.monotonic()
    try:
        out = c.run(str(ROOT / "slurm" / "submit_sweep.sh"), "experiments/sweeps/smoke.txt", "--wait", timeout=420)
    except subprocess.TimeoutExpired:
        c.cancel_all()
        pytest.fail(f"sweep did not finish in 420 s\n{c.logs()}")
    sweep_dir = c.runs / "sweeps" / "smoke"
    logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted(sweep_dir.glob("slurm-*.out")))
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{logs}\n{c.logs()}"
    assert "sweep smoke: 2 run(s)" in out.stderr and "--array=0-1" in out.stderr
    print(f"sweep of 2 array tasks: {time.monotonic() - t0:.1f} s")

    for idx, reward in [(0, "hdpo"), (1, "grpo")]:
        run_dir = sweep_dir / str(idx)
        assert (run_dir / "checkpoints" / "last.ckpt").exists(), logs
        log = (sweep_dir / next(p.name for p in sweep_dir.glob(f"slurm-*_{idx}.out"))).read_text()
        assert "Metis run finished" in log and "SLURM auto-requeueing enabled" in log, log[-3000:]
        wb = _wandb_run(run_dir)
        history = read_history(wb)
        steps = [row["train/rl_step"] for row in history if "train/rl_step" in row]
        assert steps == [1.0, 2.0], steps
        record = _run_record(wb)
        assert record.run_group == "smoke"
        assert list(record.tags) == ["smoke", f"smoke-{idx}"]
        assert record.display_name == f"smoke-{idx}"
        config = read_config(wb)
        assert config["group"] == "smoke" and config["reward"]["name"] == reward
        assert config["seed"] == idx and config["trainer"]["max_steps"] == 2


@pytest.mark.timeout(600)
def test_hydra_submitit_launcher_multirun_through_slurm(slurm_cluster):
    c = slurm_cluster
    sweep_dir = c.tmp / "multirun"
    cmd = [sys.executable, "-m", "metis.train", "--multirun", "hydra/launcher=submitit_slurm_metis",
           "experiment=hdpo_tiny", "reward=hdpo,grpo", "trainer.max_steps=1", "data.val_prompts=2", "group=launcher_smoke",
           "tags=[launcher_smoke]", f"hydra.sweep.dir={sweep_dir}"]
    t0 = time.monotonic()
    try:
        out = c.run(*cmd, timeout=420)
    except subprocess.TimeoutExpired:
        # submitit waits for result files forever when a job died without one (no sacct here)
        c.cancel_all()
        job_logs = "\n".join(f"--- {p}\n{_tail(p, 40)}" for p in sorted(sweep_dir.glob(".submitit/*/*.out")))
        pytest.fail(f"the multirun did not finish in 420 s\n{job_logs}\n{c.logs()}")
    job_logs = "\n".join(f"--- {p}\n{_tail(p, 40)}" for p in sorted(sweep_dir.glob(".submitit/*/*.out")))
    assert out.returncode == 0, f"{out.stdout[-3000:]}\n{out.stderr[-5000:]}\n{job_logs}"
    print(f"submitit multirun of 2 jobs: {time.monotonic() - t0:.1f} s")

    # one SLURM array of two tasks: .submitit/<array id>/ (the sbatch file), <array id>_0/, <array id>_1/
    job_dirs = sorted(p for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert [p.name.split("_")[1] for p in job_dirs] == ["0", "1"], job_dirs
    assert all(list(d.glob("*_result.pkl")) for d in job_dirs), job_logs
    assert "SLURM auto-requeueing enabled" in job_logs  # Lightning saw the SLURM environment
    run_dirs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_", 1)[0] for p in run_dirs] == ["0", "1"], run_dirs
    for run_dir, reward in zip(run_dirs, ["hdpo", "grpo"]):
        wb = _wandb_run(run_dir)
        steps = [row["train/rl_step"] for row in read_history(wb) if "train/rl_step" in row]
        assert steps == [1.0], steps
        assert _run_record(wb).run_group == "launcher_smoke"
        assert read_config(wb)["reward"]["name"] == reward


REQUEUE_STEPS = 32  # long enough that SIGUSR1 always lands during fit, even on a fast machine


def _diagnose(c: Cluster, job: str) -> str:
    """What the cluster says about a job that did not do what the test waited for (rc and stderr too:
    an empty squeue line can be a controller that did not answer)."""
    parts = []
    for cmd in (("squeue", "-h", "-j", job, "-o", "%T|%r"), ("scontrol", "show", "job", job), ("sinfo", "-R")):
        try:
            out = c.run(*cmd)
            parts.append(f"$ {' '.join(cmd)} (rc {out.returncode})\n{out.stdout.strip()}\n{out.stderr.strip()}")
        except subprocess.TimeoutExpired:
            parts.append(f"$ {' '.join(cmd)}: no answer in 30 s")
    return "\n".join(parts) + "\n" + c.logs()


@pytest.mark.timeout(1200)
def test_train_sbatch_requeues_on_sigusr1_and_resumes_in_the_same_dir(slurm_cluster):
    """SIGUSR1 (what --signal=SIGUSR1@1800 sends before the time limit) -> the Preemption callback
    saves checkpoints/preempt.ckpt (with its completion marker) at the step boundary and runs
    `scontrol requeue`; the requeued job resumes from it (ckpt_path=last) in the same run dir and
    continues the same W&B run."""
    c = slurm_cluster
    t0 = time.monotonic()
    log = c.tmp / "train-%j.out"
    env_args = ["--export=ALL,EXPERIMENT=hdpo_tiny"]
    # --time above the script's --signal=SIGUSR1@1800 lead: with --time=30 (minutes) SLURM signals
    # every (requeued) job as it starts, and each requeued job pre-empts itself again
    out = c.run("sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
                "--time=60", f"--output={log}", *env_args, str(ROOT / "slurm" / "train.sbatch"),
                f"trainer.max_steps={REQUEUE_STEPS}", "data.val_prompts=2")
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    log = Path(str(log).replace("%j", job))
    run_dir = c.runs / "slurm" / f"metis-train_{job}"
    try:
        # 1. wait for Lightning's SIGUSR1 handler (before it, SIGUSR1 would simply kill python)
        deadline = time.monotonic() + 240
        while "SLURM auto-requeueing enabled" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, f"training never started\n{_tail(log)}"
            time.sleep(0.5)
        # no pause here: a CI machine runs a tiny step in ~0.5 s, and a signal that lands after fit
        # has nothing to requeue (REQUEUE_STEPS leaves a margin of many seconds)
        assert c.run("scancel", "--signal=USR1", job).returncode == 0
        # 2. at the step boundary the ranks save together and requeue; SLURM holds a requeued job
        #    ~2 min (BeginTime)
        deadline = time.monotonic() + 120
        while True:
            state = c.run("squeue", "-h", "-j", job, "-o", "%T|%r").stdout.strip()
            if state.startswith("PENDING") and (run_dir / "checkpoints" / "preempt.ckpt.complete").exists():
                break
            assert time.monotonic() < deadline, (
                f"no requeue (state {state!r}; empty: the job ended before the signal)\n{_diagnose(c, job)}\n{_tail(log)}")
            time.sleep(0.5)
        # 3. the second run starts (its first log line), resumes and finishes. No `scontrol update
        #    StartTime=now`: SLURM holds a requeued job (~2 min BeginTime) until the old instance's
        #    credential has expired; started early, the controller kills it as "non-startable: Job
        #    credential revoked" and it never runs again (seen twice in clean-clone CI runs)
        deadline = time.monotonic() + 360
        while "restart 1" not in log.read_text():
            assert time.monotonic() < deadline, f"the requeued job never started\n{_diagnose(c, job)}\n{_tail(log)}"
            time.sleep(0.5)
        assert c.wait_empty(300), f"requeued job did not finish\n{_diagnose(c, job)}\n{_tail(log)}"
    finally:
        c.cancel_all()
    print(f"train.sbatch, SIGUSR1, requeue, resume: {time.monotonic() - t0:.1f} s")
    text = log.read_text()
    assert f"scontrol requeue {job}: ok" in text, text[-3000:]
    assert "restart 1" in text and "ckpt_path=last" in text, text[-3000:]
    assert "Metis run pre-empted at step" in text and f"requeued SLURM job {job}" in text, text[-3000:]
    assert f"ckpt_path=last: resuming from {run_dir / 'checkpoints'}/" in text, text[-3000:]  # preempt or last: step 1
    assert text.count("Metis run finished") == 1 and "restart 2" not in text, text[-3000:]
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and runs[0].name.split("-")[-1] == runs[1].name.split("-")[-1], runs  # one W&B run id
    steps = [row["train/rl_step"] for row in read_history(runs[1]) if "train/rl_step" in row]
    assert steps and steps[-1] == float(REQUEUE_STEPS), steps
