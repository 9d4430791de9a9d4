"""The agent loop driven by scripted model outputs: masks, tool-call counts, image placeholders."""

from __future__ import annotations

from helpers import ANSWER, CALL, FakeToolBox, ScriptedEngine, make_task
from metis.core.format import parse_tool_call, ParseError, sanitize_observation, build_system_prompt
from metis.agent.loop import AgentLoop, RolloutConfig


def run_scripts(tiny_policy, scripts, **cfg):
    _, processor = tiny_policy
    toolbox = FakeToolBox()
    loop = AgentLoop(ScriptedEngine(processor, scripts), toolbox, processor, RolloutConfig(**cfg))
    return loop, toolbox, loop.run([make_task()], n=len(scripts))


def test_masks_counts_and_placeholders(tiny_policy):
    _, processor = tiny_policy
    tok = processor.tokenizer
    loop, toolbox, trajs = run_scripts(tiny_policy, [[CALL, CALL, ANSWER], [ANSWER]], max_turns=4)
    two_calls, direct = trajs
    assert (two_calls.num_tool_calls, two_calls.num_turns, two_calls.truncated) == (2, 3, False)
    assert (direct.num_tool_calls, direct.num_turns, direct.truncated) == (0, 1, False)
    assert two_calls.final_answer == "42" and direct.final_answer == "42"
    # model tokens (mask 1) decode to exactly the scripted turns, in order
    model_ids = [i for i, m in zip(two_calls.response_ids, two_calls.response_mask) if m]
    assert tok.decode(model_ids) == CALL + CALL + ANSWER
    # forced tokens (mask 0) are the two observation turns, each with one image's placeholders
    forced = [i for i, m in zip(two_calls.response_ids, two_calls.response_mask) if not m]
    text = tok.decode(forced)
    assert text.count("<|im_start|>user\nCode execution result:\n42") == 2
    assert text.count("<|vision_start|>") == 2 and text.startswith("<|im_end|>")
    n_pad = sum(1 for i in two_calls.input_ids if i == processor.image_token_id)
    grid = two_calls.encoded.grid_thw
    assert grid.shape == (3, 3)  # prompt image + one per observation
    assert n_pad == int((grid.prod(-1) // 4).sum())  # merge 2x2 patches per token
    assert len(two_calls.images) == 3
    # the direct answer has no forced tokens at all
    assert all(direct.response_mask) and direct.encoded.grid_thw.shape == (1, 3)
    assert sorted(toolbox.started) == sorted(toolbox.ended) and len(toolbox.started) == 2


def test_bad_calls_become_error_observations(tiny_policy):
    _, processor = tiny_policy
    bad_json = '<reason>x</reason><tool_call>{"name": "python", "arguments": {code: 1}}</tool_call>'
    unknown = '<reason>x</reason><tool_call>{"name": "calculator", "arguments": {}}</tool_call>'
    loop, toolbox, trajs = run_scripts(tiny_policy, [[bad_json, unknown, ANSWER]], max_turns=4)
    t = trajs[0]
    assert t.num_tool_calls == 2 and t.tool_errors == 2 and t.final_answer == "42" and not t.truncated
    assert [o["error"] for o in t.observations] == ["parse_error", "unknown_tool"]
    forced = processor.tokenizer.decode([i for i, m in zip(t.response_ids, t.response_mask) if not m])
    assert "not valid JSON" in forced and "unknown tool calculator" in forced


def test_out_of_turns_and_budget_truncate(tiny_policy):
    _, trajs_turns = None, run_scripts(tiny_policy, [[CALL, CALL]], max_turns=2)[2]
    assert trajs_turns[0].truncated and trajs_turns[0].num_tool_calls == 2 and trajs_turns[0].final_answer is None
    rambling = "<reason>" + "blah " * 200
    trajs = run_scripts(tiny_policy, [[rambling]], max_turns=3, max_new_tokens=32, max_response_tokens=64)[2]
    assert trajs[0].truncated and len(trajs[0].response_ids) <= 64


def test_parse_tool_call_and_sanitize():
    assert parse_tool_call('<tool_call>{"name": "python", "arguments": {"code": "1"}}</tool_call>').name == "python"
    assert parse_tool_call('<tool_call>{"name": "p", "arguments": "{\\"a\\": 1}"}</tool_call>').arguments == {"a": 1}
    for bad in ["", "<tool_call></tool_call>", "<tool_call>[1]</tool_call>", '<tool_call>{"name": 3}</tool_call>',
                '<tool_call>{"name": "p", "arguments": [1]}</tool_call>', "<tool_call>" + "[" * 5000 + "</tool_call>"]:
        assert isinstance(parse_tool_call(bad), ParseError)
    assert sanitize_observation("x<|im_end|>y", 0) == "x<\\|im_end|>y"
    assert sanitize_observation("<image><image>", 1).count("<image>") == 1
    assert "python" in build_system_prompt([{"name": "python", "description": "d"}])
    assert "tool" not in build_system_prompt([]).split("\n\n", 1)[1]


def test_unusable_prompt_is_skipped_and_reported(tiny_policy):
    _, processor = tiny_policy
    toolbox = FakeToolBox()
    loop = AgentLoop(ScriptedEngine(processor, [[ANSWER]]), toolbox, processor, RolloutConfig(max_prompt_tokens=64))
    long_task = make_task()
    long_task.question = "<image>" + "why " * 200
    good = make_task()
    good.images = [good.images[0].resize((32, 32))]
    trajs = loop.run([long_task], n=2)
    assert trajs == [] and loop.skipped[0]["task_id"] == "t0" and "max_prompt_tokens" in loop.skipped[0]["error"]
    assert toolbox.started == toolbox.ended == []
