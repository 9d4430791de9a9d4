"""The Metis turn format: system prompt, tool-call parsing, observation turns (docs/paper.md)."""

from __future__ import annotations

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

_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


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


def parse_tool_call(turn_text: str) -> ToolCall | ParseError:
    """Parse the last ``<tool_call>{json}</tool_call>`` of a model turn. Never raises."""
    matches = _TOOL_CALL_RE.findall(turn_text)
    if not matches:
        return ParseError("no <tool_call>...</tool_call> block found")
    payload = matches[-1].strip()
    try:
        call = json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as err:
        return ParseError(f"tool call is not valid JSON ({err.__class__.__name__}: {str(err)[:200]})")
    if not isinstance(call, dict):
        return ParseError("tool call must be a JSON object with 'name' and 'arguments'")
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return ParseError("tool call needs a string 'name'")
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # some models emit the arguments JSON-encoded twice
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return ParseError("'arguments' is a string that is not JSON")
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
