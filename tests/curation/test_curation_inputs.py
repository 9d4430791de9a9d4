"""Curation inputs: RL prompts refused for SFT stages, skips bounded and listed, answers taken from the
trajectory (marked) or refused, replay of long trajectories, sectioned code results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curation_helpers import curate_cfg, results

from metis.curate import curate
from metis.curation.compare import compare_observation, sections
from metis.data.samples import Sample, SampleSource
from metis.curation.judge import JudgeStage
from metis.curation.policy import NoToolSolvableStage
from metis.curation.runner import Stage, StageAborted, run_stage
from metis.data.converters import tool_call_text
from metis.data.schema import TrajectoryRecord, save_jsonl
from metis.io.tables import TooManySkipped

HEADER = "Code execution result:\n"


def python_record(rid: str, outputs: list[str], answer: str | None = "done", observations: list[str] | None = None,
                  ground_truth: list[str] | None = None, meta: dict | None = None) -> TrajectoryRecord:
    msgs: list[dict[str, Any]] = [{"role": "user", "content": "Print some numbers."}]
    for k, out in enumerate(outputs):
        call = {"name": "python", "arguments": {"code": f"print({out!r})"}}
        msgs.append({"role": "assistant", "content": f"<reason>step {k}</reason>" + tool_call_text("python", call["arguments"]),
                     "tool_call": call})
        msgs.append({"role": "tool", "content": (observations or [])[k] if observations else HEADER + out + "\n"})
    if answer is not None:
        msgs.append({"role": "assistant", "content": f"<reason>ok</reason><answer>{answer}</answer>"})
    return TrajectoryRecord(id=rid, messages=msgs, final_answer=answer, ground_truth=ground_truth or [],
                            meta=meta or {})


def test_rl_prompts_are_refused_where_trajectories_are_expected(tmp_path):
    rl = tmp_path / "rl.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": [{"role": "user", "content": "q"}], "images": [],
                                          "reward_model": {"ground_truth": "1"}, "data_source": "x"}]), rl)
    with pytest.raises(ValueError, match="holds RL prompts .* expects SFT trajectories"):
        SampleSource(rl, trajectories=True)
    assert SampleSource(rl).layout == "verl"  # rl_pass_rate takes them
    cfg = curate_cfg(tmp_path / "runs", "reexecute", f"raw_sft={rl}")
    with pytest.raises(ValueError, match="RL prompts"):
        curate(cfg)


def test_too_many_bad_rows_stop_before_any_stage_runs(tmp_path):
    path = save_jsonl([python_record(f"r{k}", ["1"]) for k in range(3)], tmp_path / "in.jsonl")
    with path.open("a") as fh:
        fh.write("{torn\n" + json.dumps({"id": "x", "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}) + "\n")
    with pytest.raises(TooManySkipped, match="2 of 5 rows .* max_skipped_fraction=0.25"):
        SampleSource(path, trajectories=True, max_skipped_fraction=0.25, skipped_rows_file=tmp_path / "s.jsonl")
    listed = [json.loads(line)["reason"] for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert listed == ["unreadable_row", "no_assistant_turn"]
    src = SampleSource(path, trajectories=True, max_skipped_fraction=0.5)
    assert dict(src.skipped.counts) == {"unreadable_row": 1, "no_assistant_turn": 1} and len(src) == 5


@dataclass
class _Traj:
    task: Any
    final_answer: str | None
    num_tool_calls: int = 0


class _AnswersPolicy:
    """Answers every task with a fixed string (the policy interface of the pass-rate stages)."""

    def __init__(self, answer: str) -> None:
        self.answer, self.asked = answer, []

    def open(self) -> None: ...

    def close(self) -> None: ...

    def run(self, tasks, n):
        self.asked += [t.id for t in tasks]
        return [_Traj(t, self.answer) for t in tasks for _ in range(n)], []


def test_no_tool_solvable_scores_against_the_trajectorys_own_answer_or_refuses(tmp_path):
    own = python_record("own", ["1"], answer="7", ground_truth=["7"], meta={"ground_truth_from": "final_answer"})
    given = python_record("given", ["1"], answer="7", ground_truth=["8"])
    none = python_record("none", ["1"], answer=None)
    policy = _AnswersPolicy("7")
    stage = NoToolSolvableStage(policy, k=2, default_verifier="exact")
    stage.open()
    rows = {r["id"]: r for r in stage.process([Sample(i, r.id, record=r) for i, r in enumerate((own, given, none))])}
    assert policy.asked == ["own", "given"]  # never scored against nothing
    assert rows["own"]["reason"] == "solvable_without_tools" and rows["own"]["details"]["ground_truth_from"] == "final_answer"
    assert rows["given"]["status"] == "kept" and rows["given"]["details"]["pass_rate"] == 0.0
    assert rows["none"]["status"] == "error" and rows["none"]["reason"] == "no_ground_truth"
    assert stage.summary(list(rows.values()))["metrics"]["ground_truth_from_final_answer"] == 1


def test_the_judge_is_never_told_ground_truth_none():
    stage = JudgeStage(client=None)
    for rec in (python_record("a", ["1"]), python_record("b", ["1"], answer="7", ground_truth=["7"],
                                                          meta={"ground_truth_from": "final_answer"})):
        text = stage.messages(rec)[0]["content"][0]["text"]
        assert "Ground truth: not given by the data set" in text and "(none)" not in text
    text = stage.messages(python_record("c", ["1"], ground_truth=["42"]))[0]["content"][0]["text"]
    assert "Ground truth: 42\n" in text


def test_sectioned_code_results_are_compared_section_by_section():
    recorded = HEADER + "stdout:\n```\n42\n```\nstderr:\nwarning: slow\n"
    assert {k: v.strip() for k, v in sections(recorded).items()} == {"stdout": "42", "stderr": "warning: slow"}
    assert compare_observation(recorded, [], HEADER + "42\nwarning: slow\n", []) is None
    diff = compare_observation(recorded, [], HEADER + "43\nwarning: slow\n", [])
    assert diff.kind == "text" and diff.detail["section"] == "stdout"
    diff = compare_observation(recorded, [], HEADER + "42\nwarning: fast\n", [])
    assert diff.detail["section"] == "stderr"
    assert compare_observation(HEADER + "stdout:\n42\n", [], HEADER + "stdout:\n42\nstderr:\n", []) is None


@pytest.mark.timeout(600)
def test_reexecute_replays_every_recorded_call_beyond_the_rl_limit(tmp_path):
    outs = [str(k) for k in range(12)]  # more calls than the RL toolbox allows per question (10)
    sectioned = [HEADER + f"stdout:\n{o}\nstderr:\n" for o in outs]
    recs = [python_record("long", outs), python_record("sectioned", outs[:2], observations=sectioned[:2]),
            python_record("wrong_section", ["5"], observations=[HEADER + "stdout:\n6\n"])]
    raw = save_jsonl(recs, tmp_path / "raw.jsonl")
    cfg = curate_cfg(tmp_path / "runs", "reexecute", f"raw_sft={raw}", "tools.tools.0.pool_size=1",
                     "tools.max_calls_per_trajectory=10")
    report = curate(cfg)
    rows = results(tmp_path / "runs" / "reexecute")
    assert rows["long"]["status"] == "kept" and rows["long"]["details"]["replayed"] == 12
    assert rows["sectioned"]["status"] == "kept"
    assert rows["wrong_section"]["reason"] == "observation_mismatch_text"
    assert rows["wrong_section"]["details"]["failure"]["section"] == "stdout"
    assert report["status"] == "complete"


class _BrokenOnOpen(Stage):
    name = "broken"

    def open(self) -> None:
        raise StageAborted("the sandbox does not work")


def test_an_abort_while_opening_still_writes_the_report(tmp_path):
    raw = save_jsonl([python_record("a", ["1"])], tmp_path / "raw.jsonl")
    with pytest.raises(StageAborted):
        run_stage(_BrokenOnOpen(), SampleSource(raw, trajectories=True), tmp_path / "out", progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "incomplete" and "sandbox does not work" in report["message"]
