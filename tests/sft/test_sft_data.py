"""SFT encoding (labels only on assistant tokens), bad-row accounting, length-aware batching."""

from __future__ import annotations

import io
import json
import random

import pytest
import torch
from PIL import Image

from metis.data.schema import TrajectoryRecord, save_records
from metis.data.sft import LengthGroupedBatchSampler, SFTDataModule, encode_record
from metis.data.sft_synthetic import PYTHON_TOOL_SPEC, make_sft_records, zoom_box
from metis.data.synthetic import make_tasks

CALL1 = '<reason>Zoom on the left.</reason><tool_call>{"name": "python", "arguments": {"code": "display(image_1.crop((0, 0, 32, 32)))"}}</tool_call>'
CALL2 = '<reason>Now the right.</reason><tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)\\ndisplay(image_1)"}}</tool_call>'
ANSWER = "<reason>Both crops show 42.</reason><answer>42</answer>"
OBS1 = "Code execution result:\n\nImages:\n<image>"
OBS2 = "Code execution result:\n42\n\nImages:\n<image>"


def three_image_record() -> TrajectoryRecord:
    msgs = [("system", "You are an efficient problem-solving agent."), ("user", "<image>What number is shown twice?"),
            ("assistant", CALL1), ("tool", OBS1), ("assistant", CALL2), ("tool", OBS2), ("assistant", ANSWER)]
    images = [Image.new("RGB", (96, 64), "white"), Image.new("RGB", (64, 64), "red"), Image.new("RGB", (32, 96), "blue")]
    return TrajectoryRecord(id="r3", messages=[{"role": r, "content": t} for r, t in msgs], images=images,
                            final_answer="42", ground_truth=["42"])


def test_labels_are_exactly_the_assistant_turns(tiny_policy):
    _, processor = tiny_policy
    tok = processor.tokenizer
    rec = three_image_record()
    enc = encode_record(rec, processor)
    # the same ids, image tokens and pixels as the processor itself produces
    text = processor.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in rec.messages],
                                         tokenize=False)
    ref = processor(text=[text], images=rec.images, return_tensors="pt")
    assert torch.equal(enc["input_ids"], ref["input_ids"][0])
    assert torch.equal(enc["mm_token_type_ids"], ref["mm_token_type_ids"][0].long())
    assert torch.equal(enc["pixel_values"], ref["pixel_values"]) and enc["image_grid_thw"].shape == (3, 3)
    # expected positions, found independently: from after "<|im_start|>assistant\n" through its "<|im_end|>"
    ids = enc["input_ids"].tolist()
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    header = tok("assistant\n", add_special_tokens=False)["input_ids"]
    expected = torch.zeros(len(ids), dtype=torch.bool)
    for i, t in enumerate(ids):
        if t == start and ids[i + 1:i + 1 + len(header)] == header:
            j = i + 1 + len(header)
            k = ids.index(end, j)
            expected[j:k + 1] = True
    labelled = enc["labels"] != -100
    assert torch.equal(labelled, expected)
    assert torch.equal(enc["labels"][labelled], enc["input_ids"][labelled])
    assert tok.decode(enc["labels"][labelled]) == f"{CALL1}<|im_end|>{CALL2}<|im_end|>{ANSWER}<|im_end|>"
    # cross-check with the tokenizer's own assistant mask before image expansion
    plain = tok.apply_chat_template(rec.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert sum(plain["assistant_masks"]) == int(labelled.sum())
    # nothing of the system, user or tool turns is learned, and image tokens never are
    assert not labelled[enc["mm_token_type_ids"].bool()].any()
    assert (enc["mm_token_type_ids"].sum() == (enc["image_grid_thw"].prod(-1) // 4).sum())
    assert "Code execution result" not in tok.decode(enc["labels"][labelled])


def test_synthetic_trajectories_solve_their_tasks(tiny_policy):
    recs = make_sft_records(40, seed=3, tool_fraction_unneeded=0.5)
    for rec in recs:
        rec.validate()
        calls = [c for c in rec.tool_calls if c]
        meta = rec.meta
        if meta["needs_tool"]:
            assert calls, "tool_fraction_needed=1.0: every hard task calls the tool"
        if calls and meta["family"] == "arithmetic":
            a, b = meta["task_meta"]["a"], meta["task_meta"]["b"]
            assert calls[0]["arguments"]["code"] == f"print({a} * {b})"
            assert rec.observations == [f"Code execution result:\n{a * b}\n"]
        if calls and meta["family"] == "zoom":
            assert rec.observations == ["Code execution result:\n\nImages:\n<image>"]
            obs = rec.images[-1]
            assert obs.width % 32 == 0 and obs.height % 32 == 0 and obs.width * obs.height >= 4096
        assert rec.final_answer == rec.ground_truth[0]
    used = [r.meta["used_tool"] for r in recs if not r.meta["needs_tool"]]
    assert 0 < sum(used) < len(used)
    # the zoom crop really contains the number: the box lies inside the canvas and is not empty
    task = next(t for t in make_tasks(8, seed=1, families=("zoom",)) if t.needs_tool)
    x0, y0, x1, y1 = zoom_box(task.images[0])
    assert 0 <= x0 < x1 <= 1024 and 0 <= y0 < y1 <= 1024 and (x1 - x0) < 100


def test_synthetic_observations_use_the_real_tool_header():
    tools = pytest.importorskip("metis.tools.python_tool")
    assert tools.HEADER == "Code execution result:\n" and PYTHON_TOOL_SPEC["name"] == "python"


def _png(color="white", size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_rows_are_skipped_and_counted(tiny_policy, tmp_path):
    _, processor = tiny_policy
    good = {"messages": [{"role": "user", "content": "<image>Q?"},
                         {"role": "assistant", "content": "<reason>r</reason><answer>1</answer>"}],
            "images": [{"bytes": _png(), "path": None}]}
    rows = [good, good,
            {**good, "images": [{"bytes": None, "path": "nowhere/missing.png"}]},            # missing image
            {**good, "images": [{"bytes": b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "path": None}]},   # corrupt bytes
            {**good, "messages": [good["messages"][0]]},                                      # no assistant turn
            {**good, "messages": [{"role": "user", "content": "<image>" + "long " * 3000},   # over-length
                                  good["messages"][1]]},
            {**good, "images": []},                                                           # placeholder, no image
            {**good, "messages": [{"role": "user", "content": "<image>Q"},
                                  {"role": "assistant", "content": "<code>a</code><code>b</code>"}]}]  # 2 calls
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r, default=lambda b: __import__("base64").b64encode(b).decode())
                              for r in rows))
    dm = SFTDataModule(str(path), processor, max_length=1024, batch_size=2, val_fraction=0.0,
                       max_skipped_fraction=1.0)
    dm.setup()
    assert len(dm.train_set) == 2
    assert dm.skipped == {"missing_image": 1, "corrupt_image": 1, "no_assistant_turn": 1, "over_length": 1,
                          "image_mismatch": 1, "bad_tool_call": 1}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 and batch["image_grid_thw"].shape == (2, 3)
    # an all-bad source fails with the counts in the message
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r, default=lambda b: "") for r in rows[2:5]))
    with pytest.raises(ValueError, match="no usable SFT row.*missing_image"):
        SFTDataModule(str(bad), processor, batch_size=2, max_skipped_fraction=1.0).setup()
    with pytest.raises(ValueError, match="6 of 8 rows are unusable.*data.max_skipped_fraction=0.1"):
        SFTDataModule(str(path), processor, max_length=1024, batch_size=2).setup()


def test_parquet_source_with_a_corrupt_image(tiny_policy, tmp_path):
    _, processor = tiny_policy
    recs = make_sft_records(6, seed=0)
    save_records(recs, tmp_path / "d")
    dm = SFTDataModule(str(tmp_path / "d"), processor, batch_size=3, val_fraction=0.34, max_length=4096)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (4, 2) and dm.skipped == {}
    batch = next(iter(dm.train_dataloader()))
    assert batch["mm_token_type_ids"].sum() == (batch["image_grid_thw"].prod(-1) // 4).sum()
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_length_grouped_batches():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(50, 100), rng.randint(900, 1000)]) for _ in range(400)]

    def waste(sampler):
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return padded / sum(lengths)

    grouped = LengthGroupedBatchSampler(lengths, batch_size=8, mega_batch_rows=128, seed=1)
    plain = LengthGroupedBatchSampler(lengths, batch_size=8, length_grouping=False, seed=1)
    assert waste(grouped) < 1.1 < 1.5 < waste(plain)
    first = list(grouped)[0]
    assert max(lengths[i] for i in first) == max(lengths)  # the longest batch first (OOM at step 1)
    grouped.set_epoch(1)
    assert list(grouped) != list(LengthGroupedBatchSampler(lengths, batch_size=8, mega_batch_rows=128, seed=1))
    budget = LengthGroupedBatchSampler(lengths, batch_tokens=4000, seed=0)
    for b in budget:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 4000
    assert waste(budget) < 1.1
    ranks = [set(map(tuple, LengthGroupedBatchSampler(lengths, batch_size=8, seed=2, num_replicas=2, rank=r)))
             for r in (0, 1)]
    assert not ranks[0] & ranks[1] and len(ranks[0]) == len(ranks[1])
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler(lengths, batch_size=8, batch_tokens=100)


def test_image_broken_after_its_header_is_skipped_at_batch_time(tiny_policy, tmp_path):
    _, processor = tiny_policy
    good = {"messages": [{"role": "user", "content": "<image>Q?"},
                         {"role": "assistant", "content": "<reason>r</reason><answer>1</answer>"}],
            "images": [{"bytes": _png("red", (64, 64)), "path": None}]}
    truncated = {**good, "images": [{"bytes": _png("blue", (64, 64))[:60], "path": None}]}
    save_path = tmp_path / "rows.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([good, truncated, good]), str(save_path))
    dm = SFTDataModule(str(save_path), processor, batch_size=4, val_fraction=0.0)
    dm.setup()
    assert len(dm.train_set) == 3 and dm.skipped == {}  # the header scan cannot see it
    batches = list(dm.train_dataloader())
    assert sum(b["input_ids"].shape[0] for b in batches) == 2 and dm.skipped == {"corrupt_image": 1}
