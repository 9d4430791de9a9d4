"""Crashes, kills and a failing judge: a rerun finishes with the output of an uninterrupted run,
asks the judge nothing twice, and nothing already curated is lost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from curation_helpers import ROOT, curate_cfg, judge_overrides, kept, planted, results

from metis.curate import curate
from metis.curation.runner import StageAborted


def judge_cli(root: Path, raw: dict, url: str, kill_at_batch: int | None = None) -> subprocess.CompletedProcess:
    """The curation CLI; with ``kill_at_batch`` it SIGKILLs itself before that batch's rows are written."""
    entry = ["-m", "metis.curate"] if kill_at_batch is None else \
        [str(Path(__file__).with_name("curate_killed.py")), str(kill_at_batch)]
    cmd = [sys.executable, *entry, "stage=judge", f"root={root}", f"stage.input={raw['sft']}",
           "batch_size=4", "~logger", "progress=false", *judge_overrides(url)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


def test_killed_judge_stage_resumes_without_repeating_requests(tmp_path, raw_small, judge_server):
    server = judge_server()
    root = tmp_path / "killed"
    # SIGKILL after the third batch's requests were answered but before its rows were written
    killed = judge_cli(root, raw_small, server.url, kill_at_batch=2)
    assert killed.returncode == -9, killed.stderr[-2000:]
    finished = results(root / "judge")
    assert len(finished) == 8 and not (root / "judge" / "kept.parquet").exists()
    asked_before = server.counts()
    assert len(asked_before) == 12  # 3 batches of 4 valid samples reached the judge
    resumed = judge_cli(root, raw_small, server.url)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "stage judge complete" in resumed.stdout
    # every sample was judged exactly once over both runs (the killed batch's replies came from the cache)
    counts = server.counts()
    assert set(counts.values()) == {1} and len(counts) == 20

    fresh = judge_server()
    cfg = curate_cfg(tmp_path / "straight", "judge", f"stage.input={raw_small['sft']}", "batch_size=4",
                     *judge_overrides(fresh.url))
    report = curate(cfg)
    assert results(root / "judge") == results(tmp_path / "straight" / "judge")
    assert kept(root / "judge") == kept(tmp_path / "straight" / "judge")
    assert json.loads((root / "judge" / "report.json").read_text())["counts"] == report["counts"]
    assert report["counts"]["bad_input"] == 3 and len(fresh.counts()) == 20


def test_judge_going_down_keeps_finished_work_and_says_so(tmp_path, raw_small, judge_server):
    flaky = judge_server(fail_after=8)
    cfg = curate_cfg(tmp_path, "judge", f"stage.input={raw_small['sft']}", "batch_size=4",
                     *judge_overrides(flaky.url, max_retries=1))
    with pytest.raises(StageAborted, match="judge unavailable.*HTTP 503.*8 of 23 samples are finished.*rerun"):
        curate(cfg)
    report = json.loads((tmp_path / "judge" / "report.json").read_text())
    assert report["status"] == "incomplete" and report["counts"]["finished"] == 8
    assert "incomplete" in (tmp_path / "judge" / "report.md").read_text()
    assert not (tmp_path / "judge" / "kept.parquet").exists()  # no partial set for the next stage
    done = {i for i, r in results(tmp_path / "judge").items() if r["status"] in ("kept", "dropped")}
    assert len(done) == 8

    healthy = judge_server()
    cfg = curate_cfg(tmp_path, "judge", f"stage.input={raw_small['sft']}", "batch_size=4",
                     *judge_overrides(healthy.url))
    report = curate(cfg)
    assert report["status"] == "complete" and report["counts"]["finished"] == 20
    assert not done & set(healthy.counts())  # finished samples were not asked again
    assert set(healthy.counts().values()) == {1}

    # a judge that cannot be reached at all: a clear error; the finished stage's output is untouched
    before = (tmp_path / "judge" / "kept.parquet").read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = curate_cfg(tmp_path, "judge", f"stage.input={raw_small['sft']}", "batch_size=4", "resume=false",
                     *judge_overrides(f"http://127.0.0.1:{port}/v1", max_retries=0, cache_path=tmp_path / "other.jsonl"))
    with pytest.raises(StageAborted, match="cannot reach the server"):
        curate(cfg)
    assert (tmp_path / "judge" / "kept.parquet").read_bytes() == before
    assert (tmp_path / "judge" / "results.jsonl.bak").exists()


def test_crash_in_a_model_stage_resumes_to_the_uninterrupted_output(tmp_path, raw_small, tiny_cache):
    plan = raw_small["plan_path"]
    common = [f"raw_rl={raw_small['rl']}", "batch_size=4", "limit=8", *planted(plan, tiny_cache)]
    crash = ["rollout.engine._target_=curation_helpers.CrashingEngine", "+rollout.engine.crash_at=3"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        curate(curate_cfg(tmp_path / "a", "rl_pass_rate", *common, *crash))
    partial = results(tmp_path / "a" / "rl_pass_rate")
    assert len(partial) == 4  # the first batch; the crash hit the second
    resumed = curate(curate_cfg(tmp_path / "a", "rl_pass_rate", *common))
    assert resumed["run"]["reused"] == len(partial)
    straight = curate(curate_cfg(tmp_path / "b", "rl_pass_rate", *common))
    assert results(tmp_path / "a" / "rl_pass_rate") == results(tmp_path / "b" / "rl_pass_rate")
    assert kept(tmp_path / "a" / "rl_pass_rate") == kept(tmp_path / "b" / "rl_pass_rate")
    assert resumed["counts"] == straight["counts"]


@pytest.mark.slow  # real sampling with the tiny model: ~5 s on an idle 2-core CPU, 30 s+ on a busy one
def test_sampling_policy_is_deterministic_across_resumes(tmp_path, raw_small, tiny_cache):
    """The real tiny model sampling (hf engine): seeded per batch, so a resumed run equals an uninterrupted one."""
    common = [f"raw_rl={raw_small['rl']}", "batch_size=2", "limit=4", "stage.impl.k=2", f"paths.cache_dir={tiny_cache}",
              "rollout.loop.max_new_tokens=8", "rollout.loop.max_response_tokens=32", "rollout.loop.max_turns=1",
              "rollout.engine.temperature=1.0"]
    first = curate(curate_cfg(tmp_path, "rl_pass_rate", *common))
    rows = results(tmp_path / "rl_pass_rate")
    assert first["counts"]["in"] == 4 and sum(len(r["details"]["answers"]) for r in rows.values()) == 8
    # as if killed after the first batch: only its rows survived; the rerun redoes batch 2 identically
    log = tmp_path / "rl_pass_rate" / "results.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    again = curate(curate_cfg(tmp_path, "rl_pass_rate", *common))
    assert again["run"]["reused"] == 2 and results(tmp_path / "rl_pass_rate") == rows
