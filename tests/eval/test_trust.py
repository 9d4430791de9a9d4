"""Evaluation a researcher can trust: judge failures are unscored (never wrong), bad input is one
clear line, resume is fingerprinted, predictions are appended per sample, and score-only runs
re-score this project's, VLMEvalKit's and lmms-eval's prediction files without a model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from bench_files import FakeToolBox, ScriptedEngine, make_all, mcq_tsv_rows, write_tsv
from test_evaluate import answer, make_cfg

from metis.eval.benchmarks import load_benchmark
from metis.eval.formats import EvalError
from metis.eval.metrics import aggregate
from metis.eval.runner import read_predictions
from metis.eval.judging import GuardedJudge
from metis.eval.scoring import score_records
from metis.evaluate import evaluate
from metis.io.judge import JudgeUnavailable

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("bench"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CountingJudge:
    def __init__(self, fail=True):
        self.fail, self.calls, self.probes = fail, 0, 0

    def judge(self, question, truth, prediction):
        self.calls += 1
        if self.fail:
            raise JudgeUnavailable("http://127.0.0.1:1/v1 down")
        return 1.0

    def probe(self, timeout_s):
        self.probes += 1
        if self.fail:
            raise JudgeUnavailable("http://127.0.0.1:1/v1 down (probe)")


def _text_rec(i, pred, truth="Joint-CNN"):
    return {"id": str(i), "answer": truth, "final_answer": pred, "verifier": "exact", "meta": {}, "error": None}


# ----------------------------------------------------------------------------- 1. judge failures
def test_unscored_rows_leave_the_accuracy_and_a_dead_judge_is_not_asked_forever():
    recs = [_text_rec(0, "Joint-CNN"), _text_rec(1, "joint-cnn."), _text_rec(2, "RNN")] + [
        _text_rec(i, f"paraphrase {i}") for i in range(3, 10)]
    judge = CountingJudge()
    scored = score_records(recs, judge, max_judge_failures=3)
    # one full (retried) request, then two quick probes: taken as down, no request per remaining row
    assert (judge.calls, judge.probes) == (1, 2)
    assert [r["verdict_status"] for r in scored[:2]] == ["correct", "correct"]
    assert {r["verdict_status"] for r in scored[2:]} == {"unscored"} and scored[-1]["verdict_note"] == "judge_down"
    m = aggregate(scored)
    assert (m["n"], m["scored"], m["unscored"], m["accuracy"]) == (10, 2, 8, 1.0)
    # a judge that recovers resets the count
    flaky = CountingJudge()
    guard = GuardedJudge(flaky, max_failures=3)
    with pytest.raises(JudgeUnavailable):
        guard.judge("q", "a", "b")
    flaky.fail = False
    assert guard.judge("q", "a", "b") == 1.0 and guard.consecutive == 0 and flaky.probes == 1


def _judge_cfg(port: int, probe: bool) -> str:
    return (f"judge={{base_url: 'http://127.0.0.1:{port}/v1', model: judge-x, api_key_env: null, max_retries: 0, "
            f"timeout_s: 2, backoff_s: 0, trust_env: false, probe: {str(probe).lower()}}}")


def _cli(*args: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "metis.evaluate", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def charxiv_tsv(path: Path, answers=("Joint-CNN", "12", "left")) -> Path:
    rows = [{"index": i, "image": "x", "question": f"Q{i}?", "answer": a, "qid": 1, "category": "cs",
             "grading_query": f"Grade Q{i}. Truth {a}. Prediction: {{PREDICTION}}"} for i, a in enumerate(answers)]
    return write_tsv(path, rows)


def test_judge_down_run_exits_non_zero_with_the_unscored_count(tmp_path):
    data = charxiv_tsv(tmp_path / "CharXiv_descriptive_val.tsv")
    preds = pd.DataFrame({"index": [0, 1, 2], "prediction": ["the Joint CNN model", "12", "on the left side"]})
    preds.to_csv(tmp_path / "model_CharXiv.tsv", sep="\t", index=False)
    port = free_port()
    common = ["mode=score", "benchmark=charxiv_dq", f"benchmark.path={data}", f"predictions={tmp_path / 'model_CharXiv.tsv'}",
              f"paths.cache_dir={tmp_path / 'cache'}", "~logger", f"output_dir={tmp_path / 'hydra'}"]
    probe = _cli(*common, _judge_cfg(port, True))
    assert probe.returncode == 2, probe.stderr[-2000:]
    line = probe.stderr.strip().splitlines()[-1]
    assert line.startswith("error: judge:") and f"127.0.0.1:{port}" in line and "Traceback" not in probe.stderr
    down = _cli(*common, _judge_cfg(port, False))
    assert down.returncode == 1, down.stderr[-2000:]
    assert "2 of 3 rows unscored" in down.stderr and "2 unscored" in down.stdout
    res = json.loads((tmp_path / "score_charxiv_dq" / "results.json").read_text())
    assert res["metrics"]["unscored"] == 2 and res["metrics"]["accuracy"] == 1.0 and res["judge"]["required"]
    assert any("unscored" in f for f in res["flags"]) and "2 unscored" in (tmp_path / "score_charxiv_dq" / "results.md").read_text()
    # required: false accepts the partial score (in-process: no second interpreter start)
    cfg = make_cfg(tmp_path, "charxiv_dq", str(data), "none", "mode=score", common[3],
                   f"score_dir={tmp_path / 'accepted'}", _judge_cfg(port, False)[:-1] + ", required: false}")
    accepted = evaluate(cfg)
    assert accepted["problems"] == [] and accepted["metrics"]["unscored"] == 2


# ----------------------------------------------------------------------------- 2. bad input
@pytest.mark.parametrize("content, message", [
    ("", "empty file"),
    ("index\tquestion\tanswer\n", "header only"),
])
def test_empty_and_header_only_files(tmp_path, content, message):
    path = tmp_path / "VStarBench.tsv"
    path.write_text(content)
    with pytest.raises(EvalError, match=message) as err:
        load_benchmark("vstar", "mcq", path=str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_answer_column_names_the_file_and_the_column(tmp_path):
    rows = mcq_tsv_rows(3)
    for r in rows:
        del r["answer"]
    path = write_tsv(tmp_path / "VStarBench.tsv", rows)
    with pytest.raises(EvalError, match=r"none of the 3 rows .*VStarBench.tsv.*no answer \(columns answer"):
        load_benchmark("vstar", "mcq", path=str(path))


def test_missing_path_with_a_hub_id_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = tmp_path / "MathVista"
    with pytest.raises(FileNotFoundError, match=rf"benchmark.path='{missing}'.*AI4Math/MathVista"):
        load_benchmark("mathvista", "mathvista", path=str(missing), hub_id="AI4Math/MathVista", split="testmini")


def test_bad_input_ends_the_run_with_one_line(tmp_path):
    # the command line prints it as "error: <message>" with exit 2 (see the judge-probe test above)
    path = tmp_path / "VStarBench.tsv"
    path.write_text("")
    with pytest.raises(EvalError) as err:
        evaluate(make_cfg(tmp_path, "vstar", str(path)))
    assert str(err.value) == f"{path}: empty file"


def test_sidecar_json_files_are_not_data_tables(tmp_path, files):
    import shutil

    folder = tmp_path / "TreeBench"
    shutil.copytree(Path(files["treebench"]).parent, folder)
    (folder / "images").mkdir()
    (folder / "images" / "0.json").write_text(json.dumps({"width": 56, "height": 56}))
    bench = load_benchmark("treebench", "mcq", path=str(folder))
    assert len(bench.tasks) == 2 and bench.skipped == []


# ----------------------------------------------------------------------------- 3. fingerprinted resume
def script(task):
    return [answer("ABC"[int(task.id) % 3])]


def test_fingerprint_refuses_or_moves_and_data_fixes_rescore(tiny_policy, tmp_path):
    model, processor = tiny_policy
    data = write_tsv(tmp_path / "VStarBench.tsv", mcq_tsv_rows(3))
    cfg = make_cfg(tmp_path, "vstar", str(data))
    res = evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox([]), engine=ScriptedEngine(processor, script))
    out = Path(cfg.output_dir)
    assert res["metrics"]["accuracy"] == 1.0 and res["run"]["generated"] == 3
    preds = read_predictions(out / "predictions.jsonl")
    assert {r["fingerprint"] for r in preds.values()} == {res["fingerprint"]} and preds["0"]["input_sha"]
    config_before = (out / "config.yaml").read_text()

    # another loop setting: refused with the reason, nothing overwritten
    other = make_cfg(tmp_path, "vstar", str(data), "none", "rollout.loop.max_turns=2")
    with pytest.raises(EvalError, match="loop settings") as err:
        evaluate(other, model=model, processor=processor, toolbox=FakeToolBox([]), engine=ScriptedEngine(processor, script))
    assert "resume=false" in str(err.value) and (out / "config.yaml").read_text() == config_before
    # ... or a new folder
    other.on_mismatch = "new_folder"
    engine = ScriptedEngine(processor, script)
    res2 = evaluate(other, model=model, processor=processor, toolbox=FakeToolBox([]), engine=engine)
    assert len(engine.calls_per_task) == 3 and (out / "config.yaml").read_text() == config_before
    assert (Path(str(out) + "-" + res2["fingerprint"][:8]) / "predictions.jsonl").exists()

    # a data fix: a corrected answer re-scores without generating; a changed question regenerates
    rows = mcq_tsv_rows(3)
    rows[1]["answer"] = "C"  # the model answered B
    rows[2]["question"] = "What color is this square?"
    write_tsv(data, rows)
    engine = ScriptedEngine(processor, script)
    res3 = evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox([]), engine=engine)
    assert list(engine.calls_per_task) == ["2"] and res3["run"]["stale"] == 1 and res3["run"]["reused"] == 2
    assert res3["metrics"]["accuracy"] == pytest.approx(2 / 3)


class InterruptingEngine(ScriptedEngine):
    """Turn 1: task 1 answers, task 0 calls a tool; turn 2: the process is interrupted."""

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False, **kw):
        if any(self.turn.get(t.traj_id, 0) >= 1 for t in trajs):
            raise KeyboardInterrupt
        return super().generate(trajs, max_new_tokens, stop_ids, greedy)


def test_predictions_are_appended_per_sample(tiny_policy, tmp_path):
    model, processor = tiny_policy
    data = write_tsv(tmp_path / "VStarBench.tsv", mcq_tsv_rows(2))
    cfg = make_cfg(tmp_path, "vstar", str(data), "python_only")
    call = '<reason>z</reason><tool_call>{"name": "python", "arguments": {"code": "1"}}</tool_call>'
    engine = InterruptingEngine(processor, lambda t: [call, answer("A")] if t.id == "0" else [answer("B")])
    with pytest.raises(KeyboardInterrupt):
        evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox(), engine=engine)
    assert list(read_predictions(Path(cfg.output_dir) / "predictions.jsonl")) == ["1"]  # only the one in flight lost


# ----------------------------------------------------------------------------- 4. score-only mode
def score_cfg(tmp_path, bench, data, preds, *extra):
    return make_cfg(tmp_path, bench, str(data), "none", "mode=score", f"predictions={preds}",
                    f"score_dir={tmp_path / ('score_' + Path(str(preds)).suffix.strip('.'))}", *extra)


def test_score_mode_rescores_this_projects_predictions_against_current_data(tiny_policy, tmp_path):
    model, processor = tiny_policy
    data = write_tsv(tmp_path / "VStarBench.tsv", mcq_tsv_rows(3))
    cfg = make_cfg(tmp_path, "vstar", str(data))
    evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox([]), engine=ScriptedEngine(processor, script))
    rows = mcq_tsv_rows(3)
    rows[0]["answer"] = "D"
    write_tsv(data, rows)
    res = evaluate(score_cfg(tmp_path, "vstar", data, Path(cfg.output_dir) / "predictions.jsonl"))
    assert res["mode"] == "score" and res["predictions_format"] == "metis" and res["truth_source"] == "benchmark data"
    assert res["metrics"]["accuracy"] == pytest.approx(2 / 3) and res["run"]["generated"] == 0


@pytest.mark.parametrize("suffix", ["xlsx", "tsv"])
def test_score_mode_reads_vlmevalkit_prediction_files(tmp_path, suffix):
    rows = mcq_tsv_rows(4)
    data = write_tsv(tmp_path / "VStarBench.tsv", rows)
    frame = pd.DataFrame([{k: v for k, v in r.items() if k != "image"} for r in rows])
    frame["prediction"] = ["A", "The answer is (B).", "D", "I cannot tell"]
    path = tmp_path / f"Qwen3-VL-8B_VStarBench.{suffix}"
    frame.to_excel(path, index=False) if suffix == "xlsx" else frame.to_csv(path, sep="\t", index=False)
    res = evaluate(score_cfg(tmp_path, "vstar", data, path))
    assert res["predictions_format"] == "vlmevalkit" and res["metrics"]["n"] == 4
    assert res["metrics"]["accuracy"] == 0.5 and res["metrics"]["unanswered"] == 1
    # without the benchmark data the file's own ground truth is used, and flagged
    res = evaluate(score_cfg(tmp_path, "vstar", tmp_path / "nowhere.tsv", path, "benchmark.url=null"))
    assert res["truth_source"] == "prediction file" and res["metrics"]["accuracy"] == 0.5
    assert any("prediction file" in f for f in res["flags"])


def test_score_mode_reads_lmms_eval_sample_logs(tmp_path):
    rows = mcq_tsv_rows(3)
    data = write_tsv(tmp_path / "VStarBench.tsv", rows)
    path = tmp_path / "samples_vstar.jsonl"
    with path.open("w") as fh:
        for i, r in enumerate(rows):
            doc = {k: v for k, v in r.items() if k != "image"}
            fh.write(json.dumps({"doc_id": i, "doc": doc, "target": r["answer"], "arguments": [],
                                 "resps": [["(A)" if i == 0 else "C"]], "filtered_resps": ["(A)" if i == 0 else "C"]}) + "\n")
    res = evaluate(score_cfg(tmp_path, "vstar", data, path))
    assert res["predictions_format"] == "lmms-eval" and res["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_score_mode_bad_prediction_files(tmp_path):
    data = write_tsv(tmp_path / "VStarBench.tsv", mcq_tsv_rows(2))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(EvalError, match="empty file"):
        evaluate(score_cfg(tmp_path, "vstar", data, empty))
    wrong = tmp_path / "other.tsv"
    pd.DataFrame({"index": ["x1", "x2"], "prediction": ["A", "B"]}).to_csv(wrong, sep="\t", index=False)
    with pytest.raises(EvalError, match="none of its 2 ids"):
        evaluate(score_cfg(tmp_path, "vstar", data, wrong))
    noprediction = tmp_path / "nopred.tsv"
    pd.DataFrame({"index": [0]}).to_csv(noprediction, sep="\t", index=False)
    with pytest.raises(EvalError, match="no 'prediction' column"):
        evaluate(score_cfg(tmp_path, "vstar", data, noprediction))


# ----------------------------------------------------------------------------- 5. results you can cite
def test_results_carry_provenance_stderr_and_flags(tiny_policy, tmp_path):
    model, processor = tiny_policy
    rows = mcq_tsv_rows(4)
    rows[3]["image"] = "bm90IGFuIGltYWdlIGF0IGFsbCBqdXN0IHRleHQgdGV4dCB0ZXh0IHRleHQ="  # corrupt
    data = write_tsv(tmp_path / "VStarBench.tsv", rows)
    cfg = make_cfg(tmp_path, "vstar", str(data), "none", "limit=3")
    res = evaluate(cfg, model=model, processor=processor, toolbox=FakeToolBox([]), engine=ScriptedEngine(processor, script))
    saved = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    prov = saved["provenance"]
    assert prov["data_sha256"] and len(prov["data_sha256"]) == 64 and prov["date_utc"].endswith("+00:00")
    assert prov["project_commit"] and prov["checkpoint_config_sha256"] and prov["fingerprint"] == res["fingerprint"]
    m = saved["metrics"]
    assert m["accuracy"] == 1.0 and m["accuracy_stderr"] == 0.0
    assert any("limit=3" in f for f in saved["flags"])
    comp = (Path(cfg.output_dir) / "comparison.md").read_text()
    assert "limited run (limit=3)" in comp and "| stderr |" in comp and "| unscored |" in comp


def test_output_dir_decisions(tmp_path):
    from metis.evaluate import _output_dir

    parts = {"checkpoint": "c1", "prompt": "p", "loop": "l"}
    out = tmp_path / "run"
    assert _output_dir(out, parts, "fp1", True, "error") == out  # nothing there yet
    out.mkdir()
    (out / "predictions.jsonl").write_text(json.dumps({"id": "0", "final_answer": "A", "error": None}) + "\n")
    with pytest.raises(EvalError, match="changed: unknown"):  # an older run without fingerprints
        _output_dir(out, parts, "fp1", True, "error")
    assert _output_dir(out, parts, "fp1", False, "error") == out  # resume=false starts over there
    (out / "predictions.jsonl").write_text(json.dumps({"id": "0", "fingerprint": "fp0", "error": None}) + "\n")
    (out / "fingerprint.json").write_text(json.dumps({"fingerprint": "fp0", "parts": {**parts, "checkpoint": "c0"}}))
    with pytest.raises(EvalError, match=r"changed: checkpoint;"):
        _output_dir(out, parts, "fp1", True, "error")
    assert _output_dir(out, parts, "fp1", True, "new_folder") == tmp_path / "run-fp1"
    assert _output_dir(out, parts, "fp0", True, "error") == out
    with pytest.raises(EvalError, match="on_mismatch"):
        _output_dir(out, parts, "fp0", True, "overwrite")
