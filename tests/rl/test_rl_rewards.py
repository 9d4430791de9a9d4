"""Format reward, answer extraction, accuracy and tool rewards (docs/paper.md, "HDPO")."""

import math

import pytest
import torch

from metis.rl.rewards import accuracy_reward, extract_answer, format_reward, tool_reward


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<reason>look</reason><answer>42</answer>", 1.0),
        ("<reason>a</reason><tool_call>{}</tool_call>", 0.0),  # no answer
        ("<reason>a</reason><tool_call>{}</tool_call>obs<reason>b</reason><answer>y</answer>", 1.0),
        ("<reason>a<reason>b</reason></reason><answer>x</answer>", 0.0),  # same-kind nesting
        ("<reason><tool_call></reason></tool_call><answer>x</answer>", 0.0),  # overlapping
        ("<reason><tool_call>{}</tool_call></reason><answer>x</answer>", 1.0),  # properly nested
        ("<reason>a</reason><answer>x</answer><reason>b</reason>", 0.0),  # answer not after last </reason>
        ("<reason>a</reason></reason><answer>x</answer>", 0.0),  # extra close
        ("</reason><reason><answer>x</answer>", 0.0),  # close before open
        ("<answer>x</answer>", 1.0),  # no <reason> at all: balanced (zero tags)
        ("<reason>a</reason><answer>x", 0.0),  # unclosed answer
        ("<reason>a</reason><tool_call>x<answer>1</answer>", 0.0),  # unclosed tool_call
        ("<reason>a</reason></answer><answer>", 0.0),  # close before open is not a pair
        ("", 0.0),
    ],
)
def test_format_reward(text, expected):
    assert format_reward(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer> 42 </answer>", "42"),
        ("<answer>1</answer> then <answer>2</answer>", "2"),
        ("<answer>a<answer>b</answer>", "b"),
        ("<answer>a</answer><answer>c", "a"),
        ("<answer></answer>", ""),
        ("no tags", None),
        ("</answer><answer>", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_accuracy_reward():
    r = accuracy_reward(torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(r, torch.tensor([1.0, 0.1, 0.9, 0.0]))
    r = accuracy_reward(torch.tensor([1.0]), torch.tensor([1.0]), w_ans=0.8, w_fmt=0.2)
    torch.testing.assert_close(r, torch.tensor([1.0]))


def test_tool_reward_shapes():
    t = torch.tensor([0, 1, 3, 2])
    ok = torch.tensor([True, True, True, False])
    assert tool_reward(t, ok).tolist() == [1.0, 0.5, 0.25, 0.0]
    exp = tool_reward(t, ok, shape="exp", beta=0.5).tolist()
    assert exp == pytest.approx([1.0, math.exp(-0.5), math.exp(-1.5), 0.0])
    assert tool_reward(t, ok, shape="linear").tolist() == [0.0, -1.0, -3.0, 0.0]
    with pytest.raises(ValueError, match="tool_reward_shape"):
        tool_reward(t, ok, shape="cubic")
