"""Public SFT formats -> TrajectoryRecord, and round trips through parquet and JSONL."""

from __future__ import annotations

import base64
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from metis.data.converters import canonical_assistant, from_deepeyes_v2, from_thyme, to_messages_row
from metis.data.rollout_records import task_from_record
from metis.data.schema import BadRecord, TrajectoryRecord, load_jsonl, load_records, save_jsonl, save_records


def img(color: str, size=(48, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def same_image(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


def assert_same_records(a: TrajectoryRecord, b: TrajectoryRecord) -> None:
    assert (a.id, a.final_answer, a.ground_truth, a.source, a.source_id, a.meta) == \
        (b.id, b.final_answer, b.ground_truth, b.source, b.source_id, b.meta)
    assert a.messages == b.messages
    assert len(a.images) == len(b.images) and all(same_image(x, y) for x, y in zip(a.images, b.images))


CODE = "crop = image_1.crop((0, 0, 20, 20))\ndisplay(crop)"

DEEPEYES_V2 = {
    "messages": [
        {"role": "system", "content": "You are DeepEyes. Use <code> to run python."},
        {"role": "user", "content": "<image>\nWhat is the sign's text? Also search who made it."},
        {"role": "assistant", "content": "<think>The sign is small; zoom in.</think>\n<code>\n```python\n" + CODE
                                         + "\n```\n</code>"},
        {"role": "user", "content": "Code execution result:\nImages:\n<image>"},
        {"role": "assistant", "content": "<think>It reads ACME. Who made it?</think>\n<tool_call>{\"name\": \"search\", "
                                         "\"arguments\": {\"query\": \"ACME sign maker\"}}</tool_call>"},
        {"role": "user", "content": "<tool_response>\n1. ACME Corp makes signs.\n</tool_response>"},
        {"role": "assistant", "content": "<think>So the answer is ACME.</think>\n<answer>ACME</answer>"},
    ],
    "images": ["imgs/a.png", "imgs/b.png"],
}


def write_deepeyes(tmp_path):
    (tmp_path / "imgs").mkdir()
    img("white").save(tmp_path / "imgs/a.png")
    img("red", (40, 40)).save(tmp_path / "imgs/b.png")
    path = tmp_path / "deepeyes_v2.json"
    path.write_text(json.dumps([DEEPEYES_V2]))
    return path


def test_deepeyes_v2_conversion(tmp_path):
    path = write_deepeyes(tmp_path)
    rec = load_jsonl(path)[0]
    assert [m["role"] for m in rec.messages] == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert rec.tool_calls == [{"name": "python", "arguments": {"code": CODE}},
                              {"name": "text_search", "arguments": {"query": "ACME sign maker"}}, None]
    first = rec.messages[2]["content"][0]["text"]
    assert first == ('<reason>The sign is small; zoom in.</reason><tool_call>{"name": "python", "arguments": '
                     + json.dumps({"code": CODE}) + "}</tool_call>")
    assert rec.observations == ["Code execution result:\nImages:\n<image>", "1. ACME Corp makes signs."]
    assert rec.messages[-1]["content"][0]["text"] == "<reason>So the answer is ACME.</reason><answer>ACME</answer>"
    assert rec.final_answer == "ACME" and len(rec.images) == 2 and same_image(rec.images[1], img("red", (40, 40)))
    assert from_deepeyes_v2(DEEPEYES_V2, tmp_path).source == "DeepEyesV2"
    task = task_from_record(rec)
    assert task.question.startswith("<image>") and len(task.images) == 1


def test_canonical_assistant_is_idempotent():
    for raw in [DEEPEYES_V2["messages"][2]["content"], DEEPEYES_V2["messages"][4]["content"],
                "<think>a</think><answer> 3 </answer>", "plain words"]:
        once, call = canonical_assistant(raw)
        assert canonical_assistant(once) == (once, call)
    with pytest.raises(BadRecord):
        canonical_assistant("<code>print(1)</code><code>print(2)</code>")


def test_round_trips_parquet_and_jsonl(tmp_path):
    rec = load_jsonl(write_deepeyes(tmp_path))[0]
    rec.meta = {"note": "x", "k": [1, 2]}
    save_records([rec, rec], tmp_path / "out")
    back = load_records(tmp_path / "out")
    assert len(back) == 2
    assert_same_records(rec, back[1])
    save_jsonl([rec], tmp_path / "j" / "recs.jsonl")
    assert_same_records(rec, load_jsonl(tmp_path / "j" / "recs.jsonl")[0])
    # the plain messages layout (what Metis-ColdStart-like parquet holds) converts back to the same record
    row = to_messages_row(rec)
    again = load_records(_write_parquet(tmp_path / "cold.parquet", [row]))[0]
    assert again.messages == rec.messages and all(same_image(a, b) for a, b in zip(again.images, rec.images))


def _write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), str(path))
    return path


def test_coldstart_layouts_messages_and_conversations(tmp_path):
    a, b = png_bytes(img("blue")), png_bytes(img("green", (32, 32)))
    messages_row = {
        "id": "m1", "data_source": "v_interaction",
        "messages": [{"role": "user", "content": "<image>How many?"},
                     {"role": "assistant", "content": "<reason>count</reason><tool_call>{\"name\": \"python\", "
                                                      "\"arguments\": {\"code\": \"display(image_1)\"}}</tool_call>"},
                     {"role": "tool", "content": "Code execution result:\n\nImages:\n<image>"},
                     {"role": "assistant", "content": "<reason>two</reason><answer>2</answer>"}],
        "images": [{"bytes": a, "path": None}, {"bytes": b, "path": None}], "answer": "2",
    }
    rec = load_records(_write_parquet(tmp_path / "m.parquet", [messages_row]))[0]
    assert rec.source == "v_interaction" and rec.id == "m1" and rec.ground_truth == ["2"]
    assert [m["role"] for m in rec.messages] == ["user", "assistant", "tool", "assistant"]
    assert rec.num_tool_calls == 1 and same_image(rec.images[1], img("green", (32, 32)))
    # from/value with image paths; a user turn after a tool call becomes the observation
    (tmp_path / "p.png").write_bytes(a)
    conv_row = {"conversations": [{"from": "human", "value": "<image>What colour?"},
                                  {"from": "gpt", "value": "<think>look</think><answer>blue</answer>"}],
                "images": ["p.png"]}
    rec2 = load_jsonl(_jsonl(tmp_path / "c.jsonl", [conv_row]))[0]
    assert rec2.messages[1]["content"][0]["text"] == "<reason>look</reason><answer>blue</answer>"
    assert same_image(rec2.images[0], img("blue"))


def _jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


THYME_RESPONSE = ("<think>The text is tiny. Let me crop.\n<code>\n```python\n" + CODE + "\n```\n</code>"
                  "<sandbox_output><image></sandbox_output>Now it is readable: it says 17.</think>"
                  "<answer>17</answer>")


def test_thyme_conversion(tmp_path):
    b64 = [base64.b64encode(png_bytes(im)).decode() for im in (img("white", (64, 64)), img("black", (32, 32)))]
    row = {"image": b64, "question": "<image>\nWhat number is shown?", "response": THYME_RESPONSE, "answer": "17"}
    path = _jsonl(tmp_path / "thyme.jsonl", [row])
    rec = load_jsonl(path)[0]
    assert rec.source == "thyme.jsonl" and rec.ground_truth == ["17"] and rec.final_answer == "17"
    assert [m["role"] for m in rec.messages] == ["user", "assistant", "tool", "assistant"]
    assert rec.tool_calls[0] == {"name": "python", "arguments": {"code": CODE}}
    assert rec.observations == ["Code execution result:\n\nImages:\n<image>"]
    assert rec.messages[3]["content"][0]["text"] == "<reason>Now it is readable: it says 17.</reason><answer>17</answer>"
    assert same_image(rec.images[1], img("black", (32, 32)))
    assert_same_records(from_thyme(row, source="thyme.jsonl"), rec)
    save_records([rec], tmp_path / "thyme.parquet")
    assert_same_records(rec, load_records(tmp_path / "thyme.parquet")[0])


def test_sandbox_output_is_not_learned(tiny_policy, tmp_path):
    from metis.data.sft import encode_record

    _, processor = tiny_policy
    row = {"image": [png_bytes(img("white", (64, 64)))], "question": "<image>Sum?",
           "response": "<think>add<code>print(20 + 22)</code><sandbox_output>SECRET 42</sandbox_output>ok</think>"
                       "<answer>42</answer>"}
    enc = encode_record(from_thyme(row), processor)
    learned = processor.tokenizer.decode(enc["labels"][enc["labels"] != -100])
    full = processor.tokenizer.decode(enc["input_ids"])
    assert "SECRET 42" in full and "SECRET" not in learned and learned.endswith("<answer>42</answer><|im_end|>")


class _ScriptedEngine:
    """Emits fixed turns (a python call, then an answer) for every trajectory."""

    def __init__(self, tokenizer, turns):
        self.tok, self.turns, self.seen = tokenizer, turns, {}

    def bind(self, model, processor):
        pass

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        out = []
        for t in trajs:
            k = self.seen.get(t.traj_id, 0)
            self.seen[t.traj_id] = k + 1
            out.append(self.tok(self.turns[k], add_special_tokens=False)["input_ids"])
        return out


def test_record_from_a_rollout(tiny_policy):
    from metis.agent.loop import AgentLoop, RolloutConfig
    from metis.data.sft import encode_record
    from metis.data.synthetic import make_tasks
    from sft_sampling import StubPythonToolBox

    _, processor = tiny_policy
    task = next(t for t in make_tasks(4, seed=2, families=("zoom",)) if t.needs_tool)
    call = '<reason>zoom</reason><tool_call>{"name": "python", "arguments": {"code": "crop = image_1.crop((0, 0, 64, 64))\\ndisplay(crop)"}}</tool_call>'
    answer = f"<reason>read it</reason><answer>{task.answer}</answer><|im_end|>"
    loop = AgentLoop(_ScriptedEngine(processor.tokenizer, [call, answer]), StubPythonToolBox(), processor,
                     RolloutConfig(max_turns=3))
    traj = loop.run([task])[0]
    rec = TrajectoryRecord.from_trajectory(traj, system_prompt=loop.system_prompt)
    assert [m["role"] for m in rec.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert rec.tool_calls[0]["name"] == "python" and rec.tool_calls[1] is None
    assert rec.observations == ["Code execution result:\n\nImages:\n<image>"] and len(rec.images) == 2
    assert rec.final_answer == task.answer and rec.source_id == task.id and rec.meta["num_tool_calls"] == 1
    rec.validate()
    enc = encode_record(rec, processor)
    learned = processor.tokenizer.decode(enc["labels"][enc["labels"] != -100])
    assert learned == call + "<|im_end|>" + answer
    # the record re-renders exactly the tokens of the rollout (the template only adds a final "\n")
    assert enc["input_ids"].tolist()[: len(traj.input_ids)] == traj.input_ids
    assert len(enc["input_ids"]) == len(traj.input_ids) + 1


def test_record_view_iterates_to_the_end_and_empty_save_is_refused(tmp_path):
    import pytest

    from metis.data.schema import load_records, save_records
    from metis.data.sft_synthetic import make_sft_records

    records = make_sft_records(3, seed=0)
    view = load_records(save_records(records, tmp_path / "r.parquet"))
    assert [r.id for r in view] == [r.id for r in records]  # `for` stops at the end
    with pytest.raises(ValueError, match="no records"):
        save_records([], tmp_path / "empty.parquet")
