"""End to end: the tiny model (or a scripted engine) over small benchmark files, tools on and off,
resumable predictions, tool-use metrics, reports and the Hydra entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_files import FakeToolBox, ScriptedEngine, make_all
from hydra import compose, initialize_config_dir

from metis.eval.runner import read_predictions
from metis.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
ALL = ["vstar", "hrbench_4k", "hrbench_8k", "treebench", "mme_realworld", "seed_bench_2_plus", "charxiv_dq",
       "charxiv_rq", "mathvista", "mathverse", "wemath", "dynamath", "logicvista"]
CALL = '<reason>zoom</reason><tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>'
BAD_CALL = '<reason>x</reason><tool_call>{"name": "calculator", "arguments": {}}</tool_call>'


def answer(text: str) -> str:
    return f"<reason>done</reason><answer>{text}</answer><|im_end|>"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("bench"))


def make_cfg(tmp_path: Path, bench: str, path: str, tools: str = "none", *extra: str):
    out = tmp_path / f"{bench}-{tools}"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[
            f"benchmark={bench}", f"benchmark.path={path}", f"tools={tools}", f"output_dir={out}",
            f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}", "model_name=tiny",
            f"tools_name={tools}", "~logger", "rollout.loop.max_turns=3", "rollout.loop.max_new_tokens=12",
            "rollout.loop.max_response_tokens=96", "batch_size=2", *extra])


def script_vstar(task):
    return {"0": [CALL, answer("A")], "1": [answer("(b)")], "2": [BAD_CALL, answer("The answer is A")]}[task.id]


def test_scripted_run_scores_tool_use_and_resumes(tiny_policy, tmp_path, files):
    model, processor = tiny_policy
    cfg = make_cfg(tmp_path, "vstar", files["vstar"], "python_only", "limit=2")
    engine, tools = ScriptedEngine(processor, script_vstar), FakeToolBox()
    res = evaluate(cfg, model=model, processor=processor, toolbox=tools, engine=engine)
    assert sorted(engine.calls_per_task) == ["0", "1"] and tools.closed
    assert res["metrics"]["n"] == 2 and res["metrics"]["accuracy"] == 1.0

    # a rerun over the full benchmark generates only the new sample
    engine2 = ScriptedEngine(processor, script_vstar)
    cfg.limit = None
    res = evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox(), engine=engine2)
    assert list(engine2.calls_per_task) == ["2"]
    assert res["run"] == {"reused": 2, "generated": 1, "failed": 0, "stale": 0, "elapsed_s": res["run"]["elapsed_s"],
                          "greedy": True, "device": "cpu"}
    m = res["metrics"]
    assert m["n"] == 3 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["tool_use_rate"] == pytest.approx(2 / 3) and m["mean_tool_calls"] == pytest.approx(2 / 3)
    assert m["tool_calls/python"] == 1 and m["tool_calls/calculator"] == 1 and m["tool_errors"] == 1
    assert m["mean_turns"] == pytest.approx(5 / 3) and m["unanswered"] == 0
    assert m["accuracy/category=direct_attributes"] == pytest.approx(2 / 3)

    # and a third run recomputes nothing (the engine is never called, the model never needed)
    engine3 = ScriptedEngine(processor, script_vstar)
    res = evaluate(cfg, model=None, processor=None, toolbox=FakeToolBox(), engine=engine3)
    assert engine3.calls_per_task == {} and res["run"]["reused"] == 3 and res["metrics"]["accuracy"] == m["accuracy"]
    preds = read_predictions(Path(cfg.output_dir) / "predictions.jsonl")
    assert preds["0"]["tool_calls"] == ["python"] and preds["2"]["error_kinds"] == ["unknown_tool"]
    out = Path(cfg.output_dir)
    for name in ("results.json", "results.csv", "results.md", "comparison.csv", "comparison.md", "scores.jsonl",
                 "config.yaml"):
        assert (out / name).stat().st_size > 0, name
    comp = (out / "comparison.md").read_text()
    assert "Metis (paper) | 91.1" in comp and "Qwen3-VL-8B + GRPO (paper, tool use) | 88.7 |  | 98" in comp

    # resume=false starts over (the old file kept as .bak)
    engine4 = ScriptedEngine(processor, script_vstar)
    cfg.resume = False
    evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox(), engine=engine4)
    assert sorted(engine4.calls_per_task) == ["0", "1", "2"] and (out / "predictions.jsonl.bak").exists()


class FlakyEngine(ScriptedEngine):
    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        if any(t.task.id == self.bad for t in trajs):
            raise RuntimeError("CUDA out of memory (simulated)")
        return super().generate(trajs, max_new_tokens, stop_ids, greedy)


def test_a_failing_sample_is_isolated_and_retried(tiny_policy, tmp_path, files):
    model, processor = tiny_policy
    cfg = make_cfg(tmp_path, "seed_bench_2_plus", files["seed_bench_2_plus"])
    engine = FlakyEngine(processor, lambda task: [answer("A")])
    engine.bad = "1"
    res = evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox([]), engine=engine)
    assert res["run"]["failed"] == 1 and res["metrics"]["runtime_errors"] == 1
    assert res["metrics"]["accuracy"] == 0.5 and res["metrics"]["unanswered"] == 1
    engine.bad = None  # the rerun retries only the failed sample
    engine.calls_per_task.clear()
    res = evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox([]), engine=engine)
    assert list(engine.calls_per_task) == ["1"] and res["metrics"]["runtime_errors"] == 0


def _check_run(res, out: Path, bench: str, tools: str):
    assert res["benchmark"] == bench and res["tools"] == tools and res["metrics"]["n"] >= 1
    assert res["run"]["failed"] == 0
    assert (res["tool_names"] == []) if tools == "none" else (res["tool_names"] == ["python"])
    for name in ("results.csv", "results.md", "comparison.csv", "comparison.md"):
        assert (out / name).exists()
    assert json.loads((out / "results.json").read_text())["metrics"]["n"] == res["metrics"]["n"]


@pytest.mark.parametrize("tools", ["none", "python_only"])
def test_tiny_model_end_to_end(tiny_policy, tmp_path, files, tools):
    model, processor = tiny_policy
    for bench in ("hrbench_8k", "mathvista"):
        cfg = make_cfg(tmp_path, bench, files[bench], tools)
        res = evaluate(cfg, model=model, processor=processor)
        _check_run(res, Path(cfg.output_dir), bench, tools)
    assert res["skipped_rows"] == 0 and (tmp_path / "hrbench_8k-" f"{tools}" / "skipped_rows.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("tools", ["none", "python_only"])
def test_tiny_model_every_benchmark(tiny_policy, tmp_path, files, tools):
    model, processor = tiny_policy
    for bench in ALL:
        cfg = make_cfg(tmp_path, bench, files[bench], tools)
        _check_run(evaluate(cfg, model=model, processor=processor), Path(cfg.output_dir), bench, tools)


def test_cli_one_command(tmp_path, files, tiny_cache):
    env = dict(os.environ, METIS_RUNS=str(tmp_path / "runs"), METIS_CACHE=tiny_cache, WANDB_MODE="offline")
    cmd = [sys.executable, "-m", "metis.evaluate", "benchmark=vstar", f"benchmark.path={files['vstar']}", "tools=none",
           "limit=2", "logger=csv", "rollout.loop.max_turns=1", "rollout.loop.max_new_tokens=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "eval" / "tiny" / "vstar" / "tools_none"
    res = json.loads((out / "results.json").read_text())
    assert res["model"] == "tiny" and res["tools"] == "none" and res["metrics"]["n"] == 2
    assert "| vstar | Metis (paper) | 91.1" in proc.stdout
