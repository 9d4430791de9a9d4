"""Files in the public layouts convert faithfully or are skipped with a named reason; the tokens
trained on, decoded, are exactly the canonical assistant turns of each layout."""

from __future__ import annotations

import json

import pytest
from public_layouts import (
    BAD_KINDS, LLAMAFACTORY_ROW, TRACEBACK, coldstart_row, deepeyes_row, png, thyme_row, write_bad_rows_sample,
    write_jsonl, write_parquet,
)

from metis.data.converters import canonical_assistant, from_thyme
from metis.data.schema import BadRecord, TrajectoryRecord, load_records
from metis.data.sft import SFTDataModule, encode_record
from metis.io.tables import SkippedRows, open_table, read_rows


def call(code: str) -> str:
    return '<tool_call>{"name": "python", "arguments": {"code": ' + json.dumps(code) + "}}</tool_call>"


def test_thyme_tags_inside_outputs_and_code_do_not_cut_turns():
    rec = from_thyme(thyme_row())
    rec.validate()
    assert [m["role"] for m in rec.messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert rec.tool_calls == [{"name": "python", "arguments": {"code": "print(x)"}},
                              {"name": "python", "arguments": {"code": 'x = 3\nprint("<code>x</code>", x * 5)'}},
                              None]
    assert rec.observations == ["Code execution result:\n" + TRACEBACK, "Code execution result:\n<code>x</code> 15"]
    assert rec.final_answer == "15" and rec.ground_truth == ["15"] and rec.meta["ground_truth_from"] == "final_answer"
    assert rec.messages[3]["content"][0]["text"].startswith("<reason>x is undefined; define it.</reason><tool_call>")


@pytest.mark.parametrize("response, kind", [
    ("<think>a</think><code>print(1)</code> and no output", "unbalanced_tags"),
    ("<code>print(1)</code><sandbox_output>1", "unbalanced_tags"),
])
def test_thyme_broken_blocks_are_named(response, kind):
    with pytest.raises(BadRecord) as err:
        from_thyme({**thyme_row(), "response": response})
    assert err.value.kind == kind


@pytest.mark.parametrize("text, kind", [
    ("<reason>so</reason><answer>4", "unbalanced_tags"),
    ("<reason>check <code>print(1)</reason><answer>4</answer>", "tool_call_in_reasoning"),
    ("<reason>call " + call("print(1)") + "</reason><answer>4</answer>", "tool_call_in_reasoning"),
    ("<reason>a</reason></answer>", "unbalanced_tags"),
])
def test_validate_rejects_unbalanced_tags_and_calls_in_reasoning(text, kind):
    rec = TrajectoryRecord(id="x", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": text}])
    with pytest.raises(BadRecord) as err:
        rec.validate()
    assert err.value.kind == kind


def test_validate_final_answer_is_required_unless_kept_for_curation():
    rec = TrajectoryRecord(id="x", messages=[
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<reason>r</reason>" + call("print(1)"),
         "tool_call": {"name": "python", "arguments": {"code": "print(1)"}}},
        {"role": "tool", "content": "Code execution result:\n1"}])
    with pytest.raises(BadRecord, match="no_final_answer"):
        rec.validate()
    rec.validate(require_answer=False)
    # code printing tags inside a tool call is not a tag problem
    ok = TrajectoryRecord(id="y", messages=[{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "<reason>r</reason><answer><b></answer>"}])
    ok.validate()


def test_call_and_answer_in_one_turn_is_not_silently_cut():
    with pytest.raises(BadRecord) as err:
        canonical_assistant("<think>t</think><code>print(1)</code><answer>1</answer>")
    assert err.value.kind == "call_and_answer"
    text, c = canonical_assistant('<think>t</think><code>print("<answer>1</answer>")</code>')
    assert c == {"name": "python", "arguments": {"code": 'print("<answer>1</answer>")'}} and "<answer>" not in \
        text.split("<tool_call>")[0]


def test_a_code_tag_mentioned_in_reasoning_is_not_taken_for_the_block():
    text, c = canonical_assistant("<think>I will use <code> now</think><code>\n```python\nprint(2)\n```\n</code>")
    assert c == {"name": "python", "arguments": {"code": "print(2)"}}
    rec = TrajectoryRecord(id="x", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": text,
                                                                              "tool_call": c}])
    with pytest.raises(BadRecord) as err:  # the stray tag stays visible, and is refused, not trained on
        rec.validate(require_answer=False)
    assert err.value.kind == "tool_call_in_reasoning"


def test_llamafactory_thought_before_a_function_call_is_one_turn():
    from metis.data.converters import from_messages_row

    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "Let me search."},
                             {"from": "function_call", "value": '{"name": "search", "arguments": "{\\"query\\": \\"x\\"}"}'},
                             {"from": "observation", "value": "r"}, {"from": "gpt", "value": "<answer>y</answer>"}]}
    rec = from_messages_row(row)
    assert [m["role"] for m in rec.messages] == ["user", "assistant", "tool", "assistant"]
    assert rec.messages[1]["content"][0]["text"].startswith("<reason>Let me search.</reason><tool_call>")
    assert rec.tool_calls[0] == {"name": "text_search", "arguments": {"query": "x"}}


def test_llamafactory_function_call_and_observation_roles(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "sign.png").write_bytes(png())
    path = tmp_path / "glaive_like.json"
    path.write_text(json.dumps([LLAMAFACTORY_ROW]))
    rec = load_records(path)[0]
    rec.validate()
    assert [m["role"] for m in rec.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert rec.tool_calls == [{"name": "text_search", "arguments": {"query": "ACME signs"}}, None]
    assert rec.observations == ["1. ACME Corp makes signs."] and rec.final_answer == "ACME Corp"
    assert rec.source == "glaive_like.json"  # the dataset, not the layout


def test_relative_image_paths_resolve_against_the_data_files_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "q.png").write_bytes(png("blue"))
    write_parquet(data / "train.parquet", [deepeyes_row(0, "imgs/q.png")])
    monkeypatch.chdir(tmp_path)  # not the data folder
    rec = load_records(data / "train.parquet")[0]
    assert rec.images[0].getpixel((0, 0)) == (0, 0, 255) and rec.source == "data/train.parquet"
    write_parquet(data / "moved.parquet", [deepeyes_row(0, "elsewhere/q.png")])
    with pytest.raises(BadRecord, match="image_root"):
        load_records(data / "moved.parquet")[0]


def test_an_rl_prompt_file_is_not_taken_for_trajectories(tmp_path):
    rl = write_parquet(tmp_path / "rl.parquet", [{"prompt": [{"role": "user", "content": "<image>q"}],
                                                 "images": [{"bytes": png(), "path": None}], "data_source": "x",
                                                 "reward_model": {"ground_truth": "1", "style": "rule"}}])
    with pytest.raises(ValueError, match="RL prompt set"):
        load_records(rl)


def test_one_bad_row_of_each_kind_is_counted_by_reason(tmp_path):
    table = open_table(write_bad_rows_sample(tmp_path))
    skips = SkippedRows("test", max_fraction=1.0, file=tmp_path / "skipped_rows.jsonl")
    view = load_records(tmp_path / "sample.jsonl")

    def check(rec):
        rec.validate()
        return rec

    good = list(read_rows(view, check, skips))
    assert len(table) == len(view) == 12 + 1 + sum(BAD_KINDS.values())
    assert len(good) == 13 and dict(skips.counts) == BAD_KINDS
    assert good[12][1].final_answer == str((6 + 99) * 7)  # messages stored as a JSON string: decoded, kept
    skips.finish(len(view))
    listed = [json.loads(line) for line in (tmp_path / "skipped_rows.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in listed) == sorted(k for k, n in BAD_KINDS.items() for _ in range(n))


# ---- decoded labels, per layout ----------------------------------------------------------------
def _labelled(rec: TrajectoryRecord, processor) -> str:
    enc = encode_record(rec, processor, system_prompt="SYS")
    keep = enc["labels"] != -100
    return processor.tokenizer.decode(enc["labels"][keep])


def _expected(*turns: str) -> str:
    return "".join(t + "<|im_end|>" for t in turns)


def test_decoded_labels_per_layout(tiny_policy, tmp_path):
    """Exactly the canonical assistant turns (and their <|im_end|>) are trained on; observations,
    prompts and images are not."""
    _, processor = tiny_policy
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "q.png").write_bytes(png())
    (tmp_path / "imgs" / "sign.png").write_bytes(png())
    deepeyes = load_records(write_jsonl(tmp_path / "de.jsonl", [deepeyes_row(0, "imgs/q.png")]))[0]
    assert _labelled(deepeyes, processor) == _expected(
        "<reason>Compute it.</reason>" + call("print(6 * 7)"), "<reason>It printed 42.</reason><answer>42</answer>")
    (tmp_path / "lf.json").write_text(json.dumps([LLAMAFACTORY_ROW]))
    assert _labelled(load_records(tmp_path / "lf.json")[0], processor) == _expected(
        '<reason></reason><tool_call>{"name": "text_search", "arguments": {"query": "ACME signs"}}</tool_call>',
        "<reason>The search says ACME Corp.</reason><answer>ACME Corp</answer>")
    thyme = load_records(write_jsonl(tmp_path / "thyme.jsonl", [thyme_row()]))[0]
    assert _labelled(thyme, processor) == _expected(
        "<reason>Let me compute.</reason>" + call("print(x)"),
        "<reason>x is undefined; define it.</reason>" + call('x = 3\nprint("<code>x</code>", x * 5)'),
        "<reason>So it is 15.</reason><answer>15</answer>")
    cold = load_records(write_parquet(tmp_path / "cold.parquet", [coldstart_row()]))[0]
    assert cold.ground_truth == ["42"] and "ground_truth_from" not in cold.meta and cold.source == "coldstart_like"
    assert _labelled(cold, processor) == _expected("<reason>Multiply.</reason>" + call("print(6 * 7)"),
                                                   "<reason></reason><answer>42</answer>")


def test_batch_size_and_batch_tokens_cannot_both_be_set(tiny_policy):
    _, processor = tiny_policy
    with pytest.raises(ValueError, match="data.batch_size=4 and data.batch_tokens=1024 are both set"):
        SFTDataModule([], processor, batch_size=4, batch_tokens=1024)
