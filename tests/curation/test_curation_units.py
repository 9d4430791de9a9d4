"""The parts of the curation pipeline on their own: comparison, inputs, results log, judge client."""

from __future__ import annotations

import io
import json
import socket

import pytest
from PIL import Image, ImageDraw

from metis.curation.compare import compare_observation, image_distance, normalize_text, texts_match
from metis.curation.io import ResultLog
from metis.data.samples import SampleSource, category_of, from_verl_row
from metis.curation.judge import parse_judgement, render_transcript
from metis.io.chat_client import BadReply, ChatClient
from metis.curation.reexecute import split_images
from metis.curation.synthetic_raw import sft_record
from metis.io.judge import JudgeUnavailable


def test_text_normalisation_numbers_whitespace_addresses():
    assert texts_match("Code execution result:\n  12345678.00 \n", "Code execution result:\n12345678.0\n")
    assert texts_match("x = 0.30000000000000004", "x =   0.3")
    assert texts_match("<PIL.Image at 0x7f3a9c>", "<PIL.Image at 0x55d0e1>")
    assert texts_match("1e3 and image_1", "1000.0 and image_1")
    assert not texts_match("Code execution result:\n22738488", "Code execution result:\n22739488")
    assert not texts_match("a b", "ab")
    assert normalize_text("image_12 has 3.50 and -2.0") == "image_12 has 3.5 and -2"


def _glyph(text: str, size: int = 96) -> Image.Image:
    img = Image.new("RGB", (size, size), (245, 245, 245))
    ImageDraw.Draw(img).text((10, 20), text, fill=(200, 30, 30), font_size=48)
    return img


def test_images_by_perceptual_hash_with_tolerance():
    a = _glyph("42")
    resized = a.resize((128, 128), Image.BICUBIC)
    buf = io.BytesIO()
    a.save(buf, format="JPEG", quality=85)
    assert image_distance(a, resized) <= 4 and image_distance(a, Image.open(buf)) <= 4
    assert image_distance(a, a.transpose(Image.Transpose.ROTATE_180)) > 10
    assert compare_observation("t <image>", [a], "t <image>", [resized]) is None
    diff = compare_observation("t <image>", [a], "t <image>", [a.transpose(Image.Transpose.ROTATE_180)])
    assert diff.kind == "image" and diff.detail["distance"] > 10
    assert compare_observation("t", [a], "t", []).kind == "image_count"
    assert compare_observation("t 1", [], "t 2", []).kind == "text"


def test_sample_source_reports_bad_rows_and_duplicates(tmp_path, raw_small):
    lines = open(raw_small["sft"]).read().splitlines()
    dup = tmp_path / "dup.jsonl"
    dup.write_text("\n".join([lines[0], lines[1], lines[0], "not json at all"]) + "\n")
    (tmp_path / "images").symlink_to(f"{raw_small['sft'].rsplit('/', 1)[0]}/images")
    src = SampleSource(dup)
    assert src.ids[:3] == ["sft-good-0000", "sft-good-0001", "sft-good-0000#row-2"]
    kinds = {src.ids[i]: src.load(i).error for i in range(len(src))}
    assert kinds == {"sft-good-0000": None, "sft-good-0001": None, "sft-good-0000#row-2": "duplicate_id",
                     "row-3": "unreadable_row"}
    assert src.load(0).record.images[0].size == (224, 224)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SampleSource(tmp_path / "nope.parquet")


def test_verl_rows_become_prompt_records(tmp_path):
    import pandas as pd

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "blue").save(buf, format="PNG")
    rows = [{"data_source": "vstar", "prompt": [{"role": "system", "content": "sys"},
                                                 {"role": "user", "content": "<image>What color?"}],
             "images": [{"bytes": buf.getvalue(), "path": None}], "ability": "perception",
             "reward_model": {"ground_truth": "blue", "style": "rule"},
             "extra_info": {"answer": "blue", "index": 7, "pass8": 0.5, "question": "What color?"}},
            {"data_source": "wiki_qa", "prompt": [{"role": "user", "content": "Who? <image>"}], "images": [],
             "ability": "search", "reward_model": {"ground_truth": "x", "style": "rule"},
             "extra_info": {"answer": "x", "index": 8, "pass8": 0.1, "question": "Who?"}}]
    path = tmp_path / "rl.parquet"
    pd.DataFrame(rows).to_parquet(path)
    src = SampleSource(path)
    assert src.layout == "verl" and src.ids == ["7", "row-1"]  # a bad row keeps its position as id
    rec = src.load(0).record
    assert rec.ground_truth == ["blue"] and rec.meta["category"] == "perception" and rec.images[0].size == (32, 32)
    assert rec.meta["extra_info"]["pass8"] == 0.5
    assert src.load(1).error == "image_mismatch"
    assert category_of("search", "x") == "search" and category_of(None, "geometry3k") == "math"
    assert category_of("", "chartqa") == "perception"
    with pytest.raises(Exception, match="ground truth"):
        from_verl_row({"prompt": [{"role": "user", "content": "q"}]}, 0)


def test_results_log_last_row_wins_and_torn_line_is_skipped(tmp_path):
    log = ResultLog(tmp_path / "results.jsonl")
    log.append([{"id": "a", "status": "error", "reason": "x", "details": {}}])
    log.append([{"id": "a", "status": "kept", "reason": None, "details": {}},
                {"id": "b", "status": "dropped", "reason": "y", "details": {}}])
    with open(log.path, "a") as fh:
        fh.write('{"id": "c", "stat')  # a crash mid-write
    rows = log.read()
    assert rows["a"]["status"] == "kept" and set(rows) == {"a", "b"} and log.torn_lines == 1
    with pytest.raises(ValueError, match="status"):
        log.append([{"id": "d", "status": "maybe"}])


def test_transcript_and_images_of_a_trajectory():
    import random

    rec = sft_record("pointless", 1, random.Random(0))
    inputs, per_tool = split_images(rec)
    assert len(inputs) == 1 and per_tool == [[]]
    text = render_transcript(rec)
    assert "[tool call 1: python]" in text and "[observation 1]" in text and "<image 1>" in text
    assert "Let me look at the image more carefully." in text


def test_parse_judgement():
    reply = 'ok ```json\n{"visual_relevance": 4, "reasoning_coherence": "5", "tool_calls": [{"call": 1, ' \
            '"justified": "yes", "reason": "zoom"}], "summary": "fine"}\n```'
    got = parse_judgement(reply, 2)
    assert got["visual_relevance"] == 4 and got["reasoning_coherence"] == 5
    assert [c["justified"] for c in got["tool_calls"]] == [True, False]  # the missing call counts as unjustified
    assert parse_judgement("<think>{}</think> no json", 0) is None
    assert parse_judgement('{"visual_relevance": 9, "reasoning_coherence": 3}', 0) is None


def test_chat_client_cache_bad_replies_and_unreachable(tmp_path, judge_server):
    server = judge_server()
    msgs = [{"role": "user", "content": "Sample: s1\nFinal answer: 3\nTranscript:\n[assistant]\nx"}]
    client = ChatClient(server.url, "m", api_key_env=None, trust_env=False, cache_path=tmp_path / "c.jsonl")
    first, _ = client.complete(msgs, lambda r: parse_judgement(r, 0))
    again = ChatClient(server.url, "m", api_key_env=None, trust_env=False, cache_path=tmp_path / "c.jsonl")
    assert again.complete(msgs, lambda r: parse_judgement(r, 0))[0] == first and again.cache_hits == 1
    assert server.counts() == {"s1": 1}
    with pytest.raises(BadReply, match="unparseable"):
        client.max_retries, client.backoff_s = 1, 0.0
        client.complete([{"role": "user", "content": "Sample: s2"}], lambda r: None)
    assert server.counts()["s2"] == 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = ChatClient(f"http://127.0.0.1:{port}/v1", "m", api_key_env=None, trust_env=False, max_retries=1,
                      backoff_s=0.0)
    with pytest.raises(JudgeUnavailable, match="cannot reach") as err:
        down.complete(msgs, lambda r: r)
    assert not isinstance(err.value, BadReply)
    json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])
