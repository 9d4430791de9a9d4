"""Per-rollout rewards of docs/paper.md ("HDPO"): format, answer extraction, accuracy
and tool-efficiency rewards.

Deliberate simplifications: tags are matched literally and case-sensitively (`<reason>`, never
`<Reason>` or `<reason attr=...>`); text inside tags is not parsed (a `<tool_call>` with invalid
JSON still counts as balanced: that is the tool parser's business, not the format reward's).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

_TAG_RE = re.compile(r"</?(reason|tool_call)>")
_ANSWER_OPEN = "<answer>"
_ANSWER_CLOSE = "</answer>"

TOOL_REWARD_SHAPES = ("inverse", "exp", "linear")


def _balanced(text: str) -> bool:
    """True iff the `<reason>`/`<tool_call>` tags of `text` form a proper bracket sequence.

    Scanning left to right with a stack: an opening tag is pushed, and is refused while a tag of
    the same kind is still open (no `<reason><reason>`); a closing tag must close the most
    recently opened, still open tag (so `<reason><tool_call></reason></tool_call>` is refused);
    at the end nothing may be open. This implies equal open/close counts per kind.
    A `<tool_call>` inside an open `<reason>` is accepted (properly nested).
    """
    stack: list[str] = []
    for m in _TAG_RE.finditer(text):
        kind = m.group(1)
        if m.group(0).startswith("</"):
            if not stack or stack[-1] != kind:
                return False
            stack.pop()
        else:
            if kind in stack:
                return False
            stack.append(kind)
    return not stack


def format_reward(response_text: str) -> float:
    """1.0 iff the response is well formed, else 0.0.

    Well formed means all of:
    1. "balanced" `<reason>…</reason>` and `<tool_call>…</tool_call>` tags: every opening tag is
       closed by the next closing tag of its kind, tags never overlap
       (`<reason><tool_call></reason></tool_call>` fails), a kind is never nested inside itself,
       and the counts of opening and closing tags are equal per kind (see `_balanced`);
    2. at least one complete `<answer>…</answer>` pair that starts after the last `</reason>`
       (the whole text when there is no `</reason>`; a response without any `<reason>` can
       therefore pass: the paper (docs/paper.md) does not require one).
    `<answer>` tags elsewhere are not required to be balanced.
    """
    if not isinstance(response_text, str) or not _balanced(response_text):
        return 0.0
    last_reason = response_text.rfind("</reason>")
    tail = response_text if last_reason < 0 else response_text[last_reason + len("</reason>"):]
    start = tail.find(_ANSWER_OPEN)
    if start < 0:
        return 0.0
    return 1.0 if tail.find(_ANSWER_CLOSE, start + len(_ANSWER_OPEN)) >= 0 else 0.0


def extract_answer(response_text: str | None) -> str | None:
    """Stripped text of the last complete `<answer>…</answer>`, or None when there is none.

    "Last complete" = the last `</answer>` paired with the nearest `<answer>` before it, so
    `<answer>a<answer>b</answer>` gives "b" and a trailing unclosed `<answer>c` is ignored.
    An empty pair gives "".
    """
    if not isinstance(response_text, str):
        return None
    end = response_text.rfind(_ANSWER_CLOSE)
    while end >= 0:
        start = response_text.rfind(_ANSWER_OPEN, 0, end)
        if start >= 0:
            return response_text[start + len(_ANSWER_OPEN):end].strip()
        end = response_text.rfind(_ANSWER_CLOSE, 0, end)
    return None


def _float_tensor(x: Tensor | float | list) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.float64)


def accuracy_reward(
    r_ans: Tensor | float, r_fmt: Tensor | float, w_ans: float = 0.9, w_fmt: float = 0.1
) -> Tensor:
    """r_acc = w_ans * r_ans + w_fmt * r_fmt (the paper: 0.9 / 0.1, docs/paper.md).

    Floating inputs keep their dtype; integer/bool inputs and Python numbers give float64.
    """
    return w_ans * _float_tensor(r_ans) + w_fmt * _float_tensor(r_fmt)


def tool_reward(
    num_tool_calls: Tensor | int | list,
    correct: Tensor | bool | list,
    shape: str = "inverse",
    beta: float = 0.5,
) -> Tensor:
    """Tool-efficiency reward, 0 for incorrect rollouts whatever the shape.

    inverse: 1 / (T + 1) (the paper, docs/paper.md; no tool call gives 1); exp: exp(-beta * T);
    linear: -T (unbounded below; only its within-group differences matter after normalisation).
    A floating `num_tool_calls` keeps its dtype; integer counts give float64.
    """
    if shape not in TOOL_REWARD_SHAPES:
        raise ValueError(f"tool_reward_shape must be one of {TOOL_REWARD_SHAPES}, got {shape!r}")
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0, got {beta!r}")
    t = _float_tensor(num_tool_calls)
    ok = torch.as_tensor(correct).to(torch.bool)
    if shape == "inverse":
        r = 1.0 / (t + 1.0)
    elif shape == "exp":
        r = torch.exp(-beta * t)
    else:
        r = -t
    return torch.where(ok, r, torch.zeros_like(r))
