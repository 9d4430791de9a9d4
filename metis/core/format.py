"""The Metis turn format: system prompt, tool-call parsing, observation turns (docs/paper.md)."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from metis.core.images import IMAGE_PLACEHOLDER

SYSTEM_PROMPT_HEAD = (
    "You are an efficient problem-solving agent. Your goal is to answer the user's question "
    "accurately while minimizing unnecessary tool usage."
)
FORMAT_GUIDE = (
    "Think inside <reason>...</reason>, then either call one tool with "
    '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call> or give the final answer '
    "inside <answer>...</answer>. Use a tool only when the task genuinely requires it; if the "
    "answer can be read or worked out directly, answer without tools."
)
NO_TOOLS_GUIDE = "Think inside <reason>...</reason>, then give the final answer inside <answer>...</answer>."

VISION_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"
# What the engine forces after a tool call: close the assistant turn, open a user turn with the
# observation, reopen the assistant turn. All of it is masked out of the loss.
OBSERVATION_TEMPLATE = "<|im_end|>\n<|im_start|>user\n{obs}<|im_end|>\n<|im_start|>assistant\n"

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
# Bounds on one call's JSON (a 4096-token turn is far below both): a payload over MAX_CALL_CHARS
# or nested deeper than MAX_CALL_DEPTH is a parse error before json.loads sees it, so parsing is
# linear in the turn length and never recurses deeply (RecursionError) or stalls.
MAX_CALL_CHARS = 256 << 10
MAX_CALL_DEPTH = 64
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")


def build_system_prompt(tool_specs: list[dict[str, Any]]) -> str:
    """The paper-style system prompt listing exactly the enabled tools."""
    if not tool_specs:
        return f"{SYSTEM_PROMPT_HEAD}\n\n{NO_TOOLS_GUIDE}"
    lines = [SYSTEM_PROMPT_HEAD, "", "You can use these tools:"]
    for spec in tool_specs:
        lines.append(json.dumps({"name": spec["name"], "description": spec["description"],
                                 "parameters": spec.get("parameters", {})}))
    lines += ["", FORMAT_GUIDE]
    return "\n".join(lines)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ParseError:
    message: str


def last_tool_call_block(turn_text: str) -> str | None:
    """The payload of the last ``<tool_call>...</tool_call>`` block (blocks are taken left to
    right, each closed by the first closer after its opener, like a non-greedy regex), or None.
    Linear in ``len(turn_text)``: every search starts where the previous one ended."""
    last, pos = None, 0
    while True:
        start = turn_text.find(TOOL_CALL_OPEN, pos)
        if start < 0:
            return last
        start += len(TOOL_CALL_OPEN)
        end = turn_text.find(TOOL_CALL_CLOSE, start)
        if end < 0:
            return last
        last, pos = turn_text[start:end], end + len(TOOL_CALL_CLOSE)


def json_depth(text: str) -> int:
    """Maximum bracket nesting of JSON ``text`` outside string literals; linear, C-speed steps.

    Escaped backslashes, then escaped quotes, are removed (JSON escapes read left to right), so
    every remaining quote delimits a string: the even pieces of a split on quotes are outside."""
    outside = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[::2])
    brackets = _NOT_BRACKET_RE.sub("", outside)
    return max(itertools.accumulate(map(_STEP.__getitem__, brackets), initial=0))


def _load_json(payload: str, what: str) -> Any:
    """``json.loads`` within the size/depth bounds; ParseError on anything it cannot take."""
    if len(payload) > MAX_CALL_CHARS:
        return ParseError(f"{what} is over {MAX_CALL_CHARS} characters")
    if json_depth(payload) > MAX_CALL_DEPTH:
        return ParseError(f"{what} is nested deeper than {MAX_CALL_DEPTH} levels")
    try:
        return json.loads(payload)
    except (ValueError, RecursionError, MemoryError) as err:  # incl. ints over 4,300 digits
        return ParseError(f"{what} is not valid JSON ({err.__class__.__name__}: {str(err)[:200]})")


def parse_tool_call(turn_text: str) -> ToolCall | ParseError:
    """Parse the last ``<tool_call>{json}</tool_call>`` of a model turn.

    Never raises, is linear in the turn length and bounded in size and nesting (above)."""
    try:
        return _parse_tool_call(turn_text)
    except Exception as err:  # noqa: BLE001 - the contract is "never raises"
        return ParseError(f"tool call could not be parsed ({err.__class__.__name__})")


def _parse_tool_call(turn_text: str) -> ToolCall | ParseError:
    payload = last_tool_call_block(turn_text) if isinstance(turn_text, str) else None
    if payload is None:
        return ParseError("no <tool_call>...</tool_call> block found")
    call = _load_json(payload.strip(), "tool call")
    if isinstance(call, ParseError):
        return call
    if not isinstance(call, dict):
        return ParseError("tool call must be a JSON object with 'name' and 'arguments'")
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return ParseError("tool call needs a string 'name'")
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models emit the arguments JSON-encoded twice
        arguments = _load_json(arguments, "'arguments' (a JSON string)")
        if isinstance(arguments, ParseError):
            return arguments
    if not isinstance(arguments, dict):
        return ParseError("'arguments' must be a JSON object")
    return ToolCall(name=name, arguments=arguments)


def observation_turn(obs_text: str) -> str:
    """The forced text after a tool call; each ``<image>`` becomes Qwen's vision tokens."""
    return OBSERVATION_TEMPLATE.format(obs=obs_text.replace(IMAGE_PLACEHOLDER, VISION_TOKENS))


def error_observation(message: str) -> str:
    return f"Tool call failed: {message}"


def sanitize_observation(text: str, num_images: int) -> str:
    """Make tool output safe to tokenise.

    Control tokens (``<|im_end|>`` …) printed by model code are defused so an observation can
    never close a turn or forge an image, and the ``<image>`` placeholders are made to match
    the images actually returned.
    """
    text = text.replace("<|", "<\\|")
    if text.count(IMAGE_PLACEHOLDER) != num_images:
        text = text.replace(IMAGE_PLACEHOLDER, "[image]")
        if num_images:
            text += "\nImages:\n" + IMAGE_PLACEHOLDER * num_images
    return text
