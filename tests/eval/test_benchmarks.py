"""Every benchmark loads from small files in its public format; broken rows are reported and skipped."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_files import make_all, mcq_tsv_rows, write_tsv
from omegaconf import OmegaConf

from metis.eval.benchmarks import BENCHMARKS, load_benchmark, parse_options
from metis.eval.formats import BadRow, decode_images, encode_image_b64

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["vstar", "hrbench_4k", "hrbench_8k", "treebench", "mme_realworld", "seed_bench_2_plus", "charxiv_dq",
         "charxiv_rq", "mathvista", "mathverse", "wemath", "dynamath", "logicvista"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("bench"))


def load(name, path, **over):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "benchmark" / f"{name}.yaml"))
    cfg.update(path=path, cache_dir=None, **over)
    return load_benchmark(**cfg)


def test_every_benchmark_has_a_config_and_loader():
    assert sorted(p.stem for p in (ROOT / "conf" / "benchmark").glob("*.yaml")) == sorted(NAMES)
    for name in NAMES:
        cfg = OmegaConf.load(ROOT / "conf" / "benchmark" / f"{name}.yaml")
        assert cfg.name == name and cfg.loader in BENCHMARKS


@pytest.mark.parametrize("name", NAMES)
def test_loads_each_format(name, files):
    bench = load(name, files[name])
    assert bench.tasks, bench.skipped
    for task in bench.tasks:
        assert task.images and task.question.strip() and str(task.answer).strip()
        assert task.data_source == name and task.content()  # placeholders consistent with images
    ids = [t.id for t in bench.tasks]
    assert len(ids) == len(set(ids))


def test_verifiers_and_meta(files):
    hr = load("hrbench_4k", files["hrbench_4k"])
    assert {t.verifier for t in hr.tasks} == {"multiple_choice"}
    assert [t.meta["category"] for t in hr.tasks] == ["single", "cross", "single", "cross"]
    assert hr.tasks[0].meta["cycle_category"] == "cycle0" and hr.tasks[0].meta["options"]["D"] == "white"
    assert hr.tasks[3].images[0].getpixel((0, 0)) == (0, 128, 0)  # image shared by index with row 1 (green)
    vista = {t.id: t for t in load("mathvista", files["mathvista"]).tasks}
    assert (vista["1"].verifier, vista["1"].meta["question_type"], vista["1"].meta["task"]) == (
        "math", "free_form", "geometry problem solving")
    assert (vista["2"].verifier, vista["2"].answer, vista["2"].meta["answer_text"]) == ("multiple_choice", "B", "the dog")
    assert "A. the cat" in vista["2"].question
    verse = {t.id: t for t in load("mathverse", files["mathverse"]).tasks}
    assert verse["1"].verifier == "multiple_choice" and verse["2"].verifier == "math"
    assert verse["2"].meta["problem_version"] == "Vision Only"
    dq = load("charxiv_dq", files["charxiv_dq"]).tasks
    assert [t.id for t in dq] == ["0_dq1", "0_dq2", "0_dq4", "1_dq1", "1_dq2", "1_dq4"]  # q3 empty: no task
    assert dq[0].question == "What is the spatially highest labeled tick on the y-axis?"
    assert dq[3].question.startswith("For the subplot at row 1 and column 2, what is")
    assert dq[5].question == "What is the number of subplots?"  # layout/count questions get no prefix
    assert (dq[0].verifier, dq[1].verifier, dq[0].meta["template"]) == ("numeric", "exact", 7)
    rq = load("charxiv_rq", files["charxiv_rq"]).tasks
    assert [t.id for t in rq] == ["0_rq", "1_rq"] and rq[0].meta["answer_type"] == "text_in_chart"
    we = load("wemath", files["wemath"]).tasks
    assert [t.id for t in we] == ["7_2steps_1", "7_2steps_2", "7_2steps_multi"]
    assert we[2].meta["options"] == {"A": "1", "B": "2", "C": "3"} and we[2].answer == "C"
    dyn = {t.id: t for t in load("dynamath", files["dynamath"]).tasks}
    assert (dyn["0_0"].verifier, dyn["0_1"].verifier, dyn["1_0"].meta["qid"]) == ("numeric", "multiple_choice", "1")
    lv = load("logicvista", files["logicvista"]).tasks
    assert lv[0].answer == "A, C"
    tb = load("treebench", files["treebench"]).tasks
    assert tb[0].meta["options"] == {"A": "cup", "B": "bowl", "C": "plate"} and tb[1].answer == "B"


def test_corrupt_rows_are_reported_and_skipped(files):
    hr8 = load("hrbench_8k", files["hrbench_8k"])
    assert [t.id for t in hr8.tasks] == ["0", "2"]
    reasons = " ".join(s["reason"] for s in hr8.skipped)
    assert "undecodable image" in reasons and "fields" in reasons  # bad base64 and a malformed TSV line
    verse = load("mathverse", files["mathverse"])
    assert len(verse.tasks) == 2 and "invalid JSON" in verse.skipped[0]["reason"]


def test_missing_fields_duplicates_and_limit(tmp_path):
    rows = mcq_tsv_rows(5)
    rows[1]["answer"] = None  # no answer
    rows[2]["question"] = None  # no question
    rows[4]["index"] = 0  # duplicate id
    path = write_tsv(tmp_path / "x.tsv", rows)
    bench = load("vstar", str(path))
    assert [t.id for t in bench.tasks] == ["0", "3"] and len(bench.skipped) == 3
    assert [t.id for t in load("vstar", str(path), limit=1).tasks] == ["0"]
    with pytest.raises(FileNotFoundError, match="benchmark.path"):
        load("vstar", str(tmp_path / "missing.tsv"), url=None)


def test_image_cells_and_options():
    from bench_files import image, png_bytes

    b64 = encode_image_b64(image("red"))
    assert len(decode_images(b64)) == 1 and len(decode_images(f"['{b64}', '{b64}']")) == 2
    assert len(decode_images({"bytes": png_bytes(), "path": "x.png"})) == 1
    assert len(decode_images("data:image/png;base64," + b64)) == 1
    assert decode_images(image()) and decode_images(None) == []
    with pytest.raises(BadRow):
        decode_images("not/a/file.png")
    with pytest.raises(BadRow):
        decode_images(b"\x89PNG broken")
    assert parse_options({"choices": "['x', 'y']"}) == {"A": "x", "B": "y"}
    assert parse_options({"option": "A. 1; B. 2; C. none of these"}) == {"A": "1", "B": "2", "C": "none of these"}
    assert parse_options({"options": ["(A) cat", "(B) dog"]}) == {"A": "cat", "B": "dog"}
    assert parse_options({"A": "x", "B": None}) == {"A": "x"}
