"""Thousands of generated model turns through the real tool-call path (``parse_tool_call`` ->
``ToolBox.execute`` -> ``AgentLoop._call_tool``): nothing escapes, every failure is an error
observation, and the slowest call stays far below a second (parsing is linear in the turn).

Adversarial shapes: deeply nested arguments (RecursionError before the bounds), integers over
Python's 4,300-digit limit (ValueError), thousands of ``<tool_call>`` openers in a 1 MB turn
(39 s in the old regex), unterminated strings, escapes, double-encoded arguments, tools that
raise or return garbage.
"""

from __future__ import annotations

import json
import random
import time
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metis.core.format import (MAX_CALL_DEPTH, ParseError, ToolCall, json_depth,
                                last_tool_call_block, parse_tool_call)
from metis.agent.loop import AgentLoop
from metis.tools import ERROR_KINDS, Observation, Tool, ToolBox

SLOWEST_OK_S = 1.0  # generous: the worst shapes below take ~0.1 s here; the old regex took 39 s
OPEN, CLOSE = "<tool_call>", "</tool_call>"


class EchoTool(Tool):
    name = "echo"
    description = "echo the arguments"
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}}

    def call(self, traj_id, arguments):
        return Observation(text=json.dumps(arguments)[:500])


class RaisingTool(Tool):
    """A broken tool: raises every kind of exception, or returns something that is not an
    Observation."""
    name = "broken"
    description = "always fails"
    parameters = {"type": "object", "properties": {}}

    def call(self, traj_id, arguments):
        kind = len(json.dumps(arguments)) % 5
        if kind == 0:
            raise RecursionError("deep")
        if kind == 1:
            raise ValueError("Exceeds the limit (4300 digits)")
        if kind == 2:
            class Hostile(Exception):
                def __str__(self):
                    raise RuntimeError("no message for you")
            raise Hostile()
        if kind == 3:
            return "not an observation"
        raise MemoryError()


def _call_path(box: ToolBox):
    """``AgentLoop._call_tool`` bound to a minimal loop holding ``box`` (the real method)."""
    loop = SimpleNamespace(toolbox=box)

    def run(text: str) -> dict:
        traj = SimpleNamespace(traj_id="t", num_tool_calls=0, turn_texts=[text])
        return AgentLoop._call_tool(loop, traj, text)  # type: ignore[arg-type]
    return run


def _check(result: dict) -> None:
    assert isinstance(result["text"], str)
    assert result["error"] is None or result["error"] in ERROR_KINDS
    assert isinstance(result["images"], list)


def _adversarial() -> list[str]:
    deep = "[" * 100_000 + "]" * 100_000
    just_deep = "[" * (MAX_CALL_DEPTH + 1) + "]" * (MAX_CALL_DEPTH + 1)
    return [
        OPEN * 5000 + "x" * 1_000_000,  # thousands of openers, no closer
        (OPEN + "{") * 5000 + CLOSE,  # thousands of openers, one closer at the end
        (OPEN + '{"a": "' + CLOSE) * 2000,  # many short broken blocks
        f'{OPEN}{{"name": "echo", "arguments": {{"a": {deep}}}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {{"a": {just_deep}}}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {json.dumps(json.dumps({"a": json.loads(just_deep)}))}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {{"n": {"9" * 5000}}}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {{"n": 1e{"9" * 5000}}}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {json.dumps(json.dumps({"x": 1}) [:-1] + "9" * 5000 + "}")}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {{"t": "{chr(92) * 300_001}"}}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {{"t": "' + '\\"[' * 80_000 + f'"}}}}{CLOSE}',
        f'{OPEN}{{"name": "echo", "arguments": {{"t": "' + "y" * 400_000 + f'"}}}}{CLOSE}',
        f'{OPEN}{{"name": "broken", "arguments": {{}}}}{CLOSE}',
        OPEN + "\ud800" + CLOSE,
        OPEN + '{"name": "echo", "arguments": NaN}' + CLOSE,
        OPEN + '{"name": ' + '"' * 100_000 + CLOSE,
    ]


def test_adversarial_turns_are_error_observations_and_fast():
    box = ToolBox([EchoTool(), RaisingTool()], max_calls_per_trajectory=10**9)
    run = _call_path(box)
    slowest = 0.0
    for text in _adversarial():
        t0 = time.perf_counter()
        result = run(text)
        slowest = max(slowest, time.perf_counter() - t0)
        _check(result)
    assert slowest < SLOWEST_OK_S, slowest
    deep = run(f'{OPEN}{{"name": "echo", "arguments": {{"a": {"[" * 100 + "]" * 100}}}}}{CLOSE}')
    assert deep["error"] == "parse_error" and "nested deeper" in deep["text"]
    big = run(f'{OPEN}{{"name": "echo", "arguments": {{"n": {"9" * 5000}}}}}{CLOSE}')
    assert big["error"] == "parse_error" and "4300" in big["text"]
    for kind in range(5):  # every way the broken tool fails is an execution_error observation
        result = run(f'{OPEN}{{"name": "broken", "arguments": {{"p": "{"x" * kind}"}}}}{CLOSE}')
        assert result["error"] == "execution_error", result


def test_bounds_and_block_choice():
    ok = '{"name": "echo", "arguments": {"text": "<tool_call> [[[ \\" ]"}}'
    assert parse_tool_call(f"think {OPEN}{ok}{CLOSE} more") == ToolCall("echo", {"text": '<tool_call> [[[ " ]'})
    assert last_tool_call_block(f"{OPEN}a{CLOSE}{OPEN}b{CLOSE}{OPEN}c") == "b"
    assert last_tool_call_block(f"{OPEN}a{CLOSE}{CLOSE}") == "a"
    assert json_depth('{"a": "[[[[\\\\", "b": [[1]]}') == 3
    assert json_depth('"\\\\\\"[["') == 0
    at_limit = "[" * MAX_CALL_DEPTH + "]" * MAX_CALL_DEPTH
    assert isinstance(parse_tool_call(f'{OPEN}{{"name": "e", "arguments": {{"a": {at_limit[2:-2]}}}}}{CLOSE}'), ToolCall)
    assert isinstance(parse_tool_call(f'{OPEN}{{"name": "e", "arguments": {{"a": {at_limit}}}}}{CLOSE}'), ParseError)
    assert isinstance(parse_tool_call(None), ParseError)  # type: ignore[arg-type]


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                       st.text(max_size=30), st.sampled_from(["<tool_call>", "</tool_call>", "\\", '"']))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30)
_pieces = st.one_of(
    st.sampled_from([OPEN, CLOSE, "{", "}", "[", "]", '"', "\\", ",", ":", '"name"', '"arguments"',
                     '"echo"', '"broken"', "9" * 4400, "[" * 2000, "]" * 2000, "\ud800", "NaN"]),
    st.text(max_size=40),
    _json.map(lambda v: json.dumps(v)),
    st.builds(lambda name, args, twice: OPEN + json.dumps(
        {"name": name, "arguments": json.dumps(args) if twice else args}) + CLOSE,
        st.sampled_from(["echo", "broken", "python", "", "x"]), _json, st.booleans()),
)
_turns = st.lists(_pieces, max_size=40).map("".join)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_turns)
def test_hypothesis_turns_never_escape(text):
    box = _BOX
    t0 = time.perf_counter()
    result = _RUN(text)
    elapsed = time.perf_counter() - t0
    _check(result)
    parsed = parse_tool_call(text)
    assert isinstance(parsed, (ToolCall, ParseError))
    if isinstance(parsed, ToolCall):
        assert json_depth(json.dumps(parsed.arguments)) <= MAX_CALL_DEPTH
    assert elapsed < SLOWEST_OK_S, (elapsed, text[:200])
    assert box is _BOX


PIECES = [OPEN, CLOSE, "{", "}", "[", "]", '"', "\\", ",", ":", " ", '"name": ', '"arguments": ',
          '"echo"', '"broken"', '"python"', "9" * 4400, "1e999", "[" * 2000, "]" * 2000, "{" * 70,
          "}" * 70, "\ud800", "NaN", "null", '\\"', "<image>", "<|im_end|>", "x" * 5000]


def _random_turn(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(1, 30)):
        r = rng.random()
        if r < 0.5:
            parts.append(rng.choice(PIECES))
        elif r < 0.8:
            args = {"text": rng.choice(PIECES)} if rng.random() < 0.5 else \
                {"a": _nested(rng.randrange(120))}
            body = {"name": rng.choice(["echo", "broken", "python", ""]),
                    "arguments": json.dumps(args) if rng.random() < 0.3 else args}
            parts.append(OPEN + json.dumps(body) + (CLOSE if rng.random() < 0.9 else ""))
        else:
            parts.append("".join(chr(rng.randrange(0x110000 if rng.random() < 0.2 else 0x80))
                                 for _ in range(rng.randrange(50))))
    if rng.random() < 0.01:
        parts.append(OPEN * rng.randrange(5000) + "y" * rng.randrange(1_000_000))
    return "".join(parts)


def _nested(depth: int):
    out: object = 1
    for _ in range(depth):
        out = [out]
    return out


def test_5000_random_turns_never_escape():
    rng = random.Random(2026)
    slowest, kinds = 0.0, {}
    for _ in range(5000):
        text = _random_turn(rng)
        t0 = time.perf_counter()
        result = _RUN(text)
        slowest = max(slowest, time.perf_counter() - t0)
        _check(result)
        kinds[result["error"]] = kinds.get(result["error"], 0) + 1
    print(f"\n5000 random turns: {kinds}; slowest {slowest * 1e3:.1f} ms")
    assert slowest < SLOWEST_OK_S, slowest
    assert kinds.get(None, 0) > 100 and kinds.get("parse_error", 0) > 1000, kinds


_BOX = ToolBox([EchoTool(), RaisingTool()], max_calls_per_trajectory=10**9)
_RUN = _call_path(_BOX)
