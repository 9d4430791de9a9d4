"""Each benchmark's official scoring rule, with correct and wrong predictions on files in the
public layouts (VLMEvalKit TSV, HF parquet)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from bench_files import encode_image_b64, image, make_all, mcq_tsv_rows, png_bytes, write_parquet, write_tsv
from omegaconf import OmegaConf

from metis.eval.benchmarks import load_benchmark
from metis.eval.judging import GradingJudge, GuardedJudge, parse_grading_reply
from metis.eval.metrics import aggregate, sample_iou
from metis.eval.scoring import score_records
from metis.io.chat_client import ChatClient

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("bench"))


def bench_cfg(name: str, path, **over):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "benchmark" / f"{name}.yaml"))
    cfg.update(path=str(path), cache_dir=None, url=None, hub_id=None, **over)
    return cfg


def score(name: str, path, predictions: dict[str, str], judge=None):
    """Scored records and metrics of ``predictions`` (id -> answer text) on the benchmark at ``path``."""
    cfg = bench_cfg(name, path)
    bench = load_benchmark(**cfg)
    recs = [{"id": t.id, "final_answer": p, "response": p, "error": None} for t in bench.tasks
            for i, p in [(t.id, predictions.get(t.id))] if p is not None]
    scored = score_records(recs, judge, {t.id: t for t in bench.tasks}, cfg.get("answer_rule"))
    return {r["id"]: r for r in scored}, aggregate(scored, cfg["group_by"], cfg["extra_metrics"]), bench


# ----------------------------------------------------------------------------- MathVista
def mathvista_rows():
    img = {"bytes": png_bytes("white"), "path": None}
    return [
        # option texts that are letters: the answer "A" is the text of option B
        {"pid": "1", "question": "Which point is the vertex?", "decoded_image": img, "choices": ["B", "A", "C"],
         "answer": "A", "question_type": "multi_choice", "answer_type": "text", "precision": None, "unit": None,
         "metadata": {"task": "geometry problem solving", "skills": ["geometry reasoning"]}},
        {"pid": "2", "question": "Price?", "decoded_image": img, "choices": None, "answer": "1.45",
         "question_type": "free_form", "answer_type": "float", "precision": 2.0, "unit": None,
         "metadata": {"task": "math word problem", "skills": ["arithmetic reasoning"]}},
        {"pid": "3", "question": "How many?", "decoded_image": img, "choices": None, "answer": "12",
         "question_type": "free_form", "answer_type": "integer", "precision": None, "unit": None,
         "metadata": {"task": "math word problem", "skills": ["arithmetic reasoning", "numeric commonsense"]}}]


def test_mathvista_option_text_answers_precision_and_integers(tmp_path):
    path = write_parquet(tmp_path / "MathVista" / "testmini.parquet", mathvista_rows())
    right, m, bench = score("mathvista", path, {"1": "B", "2": "1.449", "3": "12.0"})
    assert {t.id: t.answer for t in bench.tasks}["1"] == "B"  # option lookup before reading "A" as a letter
    assert all(r["verdict_status"] == "correct" for r in right.values()) and m["accuracy"] == 1.0
    wrong, m, _ = score("mathvista", path, {"1": "A", "2": "1.44", "3": "13"})
    assert all(r["verdict_status"] == "wrong" for r in wrong.values()) and m["accuracy"] == 0.0
    _, m, _ = score("mathvista", path, {"1": "B", "2": "1.44", "3": "12"})
    assert m["accuracy/skills=arithmetic reasoning"] == 0.5 and m["accuracy/skills=numeric commonsense"] == 1.0


def test_mathvista_vlmevalkit_tsv_uses_answer_option(tmp_path):
    rows = [{"index": 7, "image": encode_image_b64(image()), "question": "Which point?", "choices": "['B', 'A']",
             "answer": "A", "answer_option": "B", "question_type": "multi_choice", "answer_type": "text",
             "precision": None, "task": "geometry problem solving", "skills": "['geometry reasoning']"}]
    path = write_tsv(tmp_path / "MathVista_MINI.tsv", rows)
    right, _, bench = score("mathvista", path, {"7": "The answer is B."})
    assert bench.tasks[0].answer == "B" and right["7"]["verdict_status"] == "correct"
    wrong, _, _ = score("mathvista", path, {"7": "A"})
    assert wrong["7"]["verdict_status"] == "wrong"


# ----------------------------------------------------------------------------- multi-letter, LogicVista
def test_logicvista_multi_letter_answers_and_each_skill(tmp_path):
    rows = mcq_tsv_rows(3, {0: {"answer": "A, C", "skill": "['inductive', 'numerical']"},
                            1: {"answer": "A and C", "skill": "['deductive']"},
                            2: {"answer": "B", "skill": "['inductive']"}})
    path = write_tsv(tmp_path / "LogicVista.tsv", rows)
    right, m, _ = score("logicvista", path, {"0": "C, A", "1": "The answer is A and C", "2": "(B)"})
    assert m["accuracy"] == 1.0
    wrong, m, _ = score("logicvista", path, {"0": "A", "1": "A, B, C", "2": "B or C"})
    assert all(r["verdict_status"] == "wrong" for r in wrong.values())
    _, m, _ = score("logicvista", path, {"0": "A, C", "1": "A", "2": "B"})
    assert m["accuracy/skill=inductive"] == 1.0 and m["accuracy/skill=deductive"] == 0.0
    assert m["accuracy/skill=numerical"] == 1.0 and not any("[" in k for k in m)


# ----------------------------------------------------------------------------- DynaMath
def test_dynamath_json_short_answers(files):
    # ids q_v: v=0 float 0.5, v=1 multiple choice A, (v=2 would be text)
    good = {"0_0": '{"solution": "rise over run", "short answer": "0.5004"}', "0_1": '{"short answer": "A"}',
            "1_0": "The slope is 0.5", "1_1": 'Here: {"solution": "x", "short answer": "(A)"}'}
    right, m, _ = score("dynamath", files["dynamath"], good)
    assert all(r["verdict_status"] == "correct" for r in right.values()), right
    assert m["dynamath/worst_case"] == 1.0
    bad = {"0_0": '{"solution": "s", "short answer": "0.502"}', "0_1": '{"short answer": "B"}',
           "1_0": '{"short answer": "-0.5"}', "1_1": "B"}
    wrong, m, _ = score("dynamath", files["dynamath"], bad)
    assert all(r["verdict_status"] == "wrong" for r in wrong.values()) and m["dynamath/worst_case"] == 0.0


def test_dynamath_text_answers_are_contained_in_the_truth(tmp_path):
    rows = [{"index": "0_0", "image": encode_image_b64(image()), "question": "Trend?", "answer": "increasing",
             "answer_type": "text", "qid": 0, "varid": 0, "subject": "algebra"}]
    path = write_tsv(tmp_path / "DynaMath.tsv", rows)
    right, _, _ = score("dynamath", path, {"0_0": '{"short answer": "Increasing"}'})
    assert right["0_0"]["verdict_status"] == "correct"
    wrong, _, _ = score("dynamath", path, {"0_0": '{"short answer": "decreasing"}'})
    assert wrong["0_0"]["verdict_status"] == "wrong"


# ----------------------------------------------------------------------------- CharXiv
def charxiv_tsv(path: Path) -> Path:
    rows = [{"index": 0, "image": encode_image_b64(image()), "question": "What is the title of the plot?",
             "answer": "Loss curves", "qid": 1, "grading_query": "Compare. Truth: Loss curves. Model: {PREDICTION}"},
            {"index": 1, "image": encode_image_b64(image()), "question": "How many lines are there?", "answer": "3",
             "qid": 10, "grading_query": "Count check. Truth: 3. Model: {PREDICTION}"}]
    return write_tsv(path, rows)


class FakeGrader:
    def __init__(self, verdict=1.0):
        self.verdict, self.graded, self.judged = verdict, [], []

    def judge(self, question, truth, prediction):
        self.judged.append(prediction)
        return self.verdict

    def grade(self, content):
        self.graded.append(content)
        return self.verdict


def test_charxiv_tsv_keeps_categories_and_grades_with_its_own_query(tmp_path):
    path = charxiv_tsv(tmp_path / "CharXiv_descriptive_val.tsv")
    grader = FakeGrader(1.0)
    right, m, bench = score("charxiv_dq", path, {"0": "the plot shows loss curves over time", "1": "3"},
                            judge=GuardedJudge(grader))
    assert [t.meta["category"] for t in bench.tasks] == ["information_extraction", "counting"]
    assert right["1"]["verdict_method"] == "rule"  # decided by the rules, no judge call
    assert right["0"]["verdict_method"] == "judge" and grader.judged == []
    assert grader.graded == ["Compare. Truth: Loss curves. Model: the plot shows loss curves over time"]
    assert m["accuracy/category=counting"] == 1.0 and m["accuracy/category=information_extraction"] == 1.0
    wrong, _, _ = score("charxiv_dq", path, {"0": "accuracy", "1": "4"}, judge=GuardedJudge(FakeGrader(0.0)))
    assert wrong["0"]["verdict_status"] == "wrong" and wrong["1"]["verdict_status"] == "wrong"


def test_grading_replies_and_a_grading_judge_over_http():
    assert parse_grading_reply('{"extracted_answer": "3", "score": 1}') == 1.0
    assert parse_grading_reply('```json\n{"extracted_answer": "x", "score": 0}\n```') == 0.0
    assert parse_grading_reply("INCORRECT") == 0.0 and parse_grading_reply("no idea") is None
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body["messages"][0]["content"])
            reply = json.dumps({"choices": [{"message": {"content": '{"extracted_answer": "3", "score": 1}'}}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(reply.encode())

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        client = ChatClient(url, "grader", api_key_env=None, max_retries=0, trust_env=False)
        judge = GradingJudge(type("Inner", (), {"model": "grader", "url": url, "prompt": "", "prompt_version": "v1",
                                                 "close": lambda self: None})(), client)
        assert judge.grade("Grade this: 3") == 1.0 and seen == ["Grade this: 3"]
        judge.close()
    finally:
        server.shutdown()


# ----------------------------------------------------------------------------- TreeBench, WeMath
def test_treebench_box_miou_and_dimensions(tmp_path):
    rows = mcq_tsv_rows(2, {0: {"category": "Perception/Attributes", "target_instances": "[[0, 0, 10, 10]]"},
                            1: {"category": "Reasoning/Ordering", "target_instances": "[[20, 20, 40, 40], [0, 0, 5, 5]]"}})
    path = write_tsv(tmp_path / "TreeBench.tsv", rows)
    preds = {"0": "<box>[0,0,10,10]</box> so A", "1": "<box>[20,20,40,40]</box> then B"}
    right, m, _ = score("treebench", path, preds)
    assert m["accuracy"] == 1.0 and m["treebench/mIoU"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["treebench/accuracy/Perception"] == 1.0 and m["treebench/accuracy/Reasoning"] == 1.0
    _, m, _ = score("treebench", path, {"0": "C", "1": "<box>[50,50,60,60]</box> D"})
    assert m["accuracy"] == 0.0 and m["treebench/mIoU"] == 0.0
    assert sample_iou("<box>[0,0,10,5]</box>", [[0, 0, 10, 10]]) == pytest.approx(0.5)
    assert sample_iou("<box>[10,0,0,5]</box>", [[0, 0, 10, 10]]) == 0.0  # invalid box ignored


def test_wemath_strict_and_loose_scores_on_the_hf_layout(files):
    # one 2-step problem: steps "2steps_1" (A), "2steps_2" (B), composite "2steps_multi" (C)
    _, m, _ = score("wemath", files["wemath"], {"7_2steps_1": "A", "7_2steps_2": "B", "7_2steps_multi": "C"})
    assert (m["wemath/CM_strict"], m["wemath/score_strict"], m["wemath/score_loose"]) == (1.0, 1.0, 1.0)
    _, m, _ = score("wemath", files["wemath"], {"7_2steps_1": "A", "7_2steps_2": "C", "7_2steps_multi": "C"})
    assert (m["wemath/RM_strict"], m["wemath/CM_loose"], m["wemath/score_strict"], m["wemath/score_loose"]) == (
        1.0, 1.0, 0.0, 1.0)
    _, m, _ = score("wemath", files["wemath"], {"7_2steps_1": "A", "7_2steps_2": "B", "7_2steps_multi": "A"})
    assert (m["wemath/IG"], m["wemath/score_strict"]) == (1.0, 0.5)
    _, m, _ = score("wemath", files["wemath"], {"7_2steps_1": "B", "7_2steps_2": "B", "7_2steps_multi": "A"})
    assert (m["wemath/IK"], m["wemath/score_loose"]) == (1.0, 0.0)


# ----------------------------------------------------------------------------- the option-letter benchmarks
@pytest.mark.parametrize("name", ["vstar", "hrbench_4k", "treebench", "mme_realworld", "seed_bench_2_plus"])
def test_option_letter_benchmarks_right_and_wrong(files, name):
    bench = load_benchmark(**bench_cfg(name, files[name]))
    truth = {t.id: t.answer for t in bench.tasks}
    wrong_letter = {t.id: next(c for c in "ABCD" if c != t.answer) for t in bench.tasks}
    right, m, _ = score(name, files[name], {i: f"The best answer is ({a})" for i, a in truth.items()})
    assert m["accuracy"] == 1.0 and all(r["verdict_method"] == "rule" for r in right.values())
    _, m, _ = score(name, files[name], wrong_letter)
    assert m["accuracy"] == 0.0
    if name == "hrbench_4k":  # cycle-averaged per category, as the official script reports
        _, m, _ = score(name, files[name], {**truth, "1": wrong_letter["1"]})
        assert m["hrbench/cross"] == pytest.approx((0.0 + 1.0) / 2) and m["hrbench/single"] == 1.0


def test_mathverse_letters_and_values(files):
    right, m, _ = score("mathverse", files["mathverse"], {"1": "B", "2": "0.5"})
    assert m["accuracy"] == 1.0 and m["accuracy/problem_version=Vision Only"] == 1.0
    _, m, _ = score("mathverse", files["mathverse"], {"1": "A", "2": "0.25"})
    assert m["accuracy"] == 0.0
