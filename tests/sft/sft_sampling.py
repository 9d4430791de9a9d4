"""Sample a trained policy through metis.agent (AgentLoop + HFEngine) and measure its format.

A stub ``python`` toolbox answers the two code shapes of the synthetic SFT data (``print(a * b)``
and ``image_1.crop((x0, y0, x1, y1))`` + ``display``) without executing model code; anything else
gets an execution error, as the real tool would give for broken code.

Run as a script to report on an export: ``python tests/sft/sft_sampling.py <run>/hf [n_tasks]``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from metis.agent.engines import HFEngine
from metis.core.format import ToolCall, parse_tool_call
from metis.agent.loop import AgentLoop, RolloutConfig
from metis.data.converters import python_observation
from metis.core.images import fit_image
from metis.data.sft_synthetic import PYTHON_TOOL_SPEC
from metis.data.synthetic import make_tasks
from metis.rl.rewards import format_reward

TURN_RE = re.compile(r"<reason>[^<]*</reason>(?:<tool_call>(?:.*)</tool_call>|<answer>[^<]+</answer>)", re.S)
_MUL = re.compile(r"print\((\d+) \* (\d+)\)")
_CROP = re.compile(r"image_1\.crop\(\((\d+), (\d+), (\d+), (\d+)\)\)")
_SCALE = re.compile(r"crop\.width \* (\d+)")


@dataclass
class StubObservation:
    text: str
    images: list[Image.Image] = field(default_factory=list)
    error: str | None = None


class StubPythonToolBox:
    def __init__(self) -> None:
        self.images: dict[str, list[Image.Image]] = {}

    def specs(self) -> list[dict[str, Any]]:
        return [PYTHON_TOOL_SPEC]

    def start(self, traj_id: str, images: list[Image.Image], meta: dict[str, Any] | None = None) -> None:
        self.images[traj_id] = images

    def end(self, traj_id: str) -> None:
        self.images.pop(traj_id, None)

    def execute(self, traj_id: str, name: str, arguments: dict[str, Any]) -> StubObservation:
        if name != "python":
            return StubObservation(f"unknown tool {name}", error="unknown_tool")
        code = str(arguments.get("code", ""))
        if m := _MUL.fullmatch(code.strip()):
            return StubObservation(python_observation(f"{int(m[1]) * int(m[2])}\n"))
        if (m := _CROP.search(code)) and "display(" in code:
            x0, y0, x1, y1 = map(int, m.groups())
            img = self.images[traj_id][0]
            if 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height:
                scale = int(s[1]) if (s := _SCALE.search(code)) else 1
                crop = img.crop((x0, y0, x1, y1))
                crop = crop.resize((crop.width * max(1, min(scale, 8)), crop.height * max(1, min(scale, 8))))
                return StubObservation(python_observation("", 1), [fit_image(crop)])
        return StubObservation(python_observation("Error: the stub tool cannot run this code"), error="execution_error")

    def metrics(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def well_formed(traj) -> bool:
    """Every model turn is ``<reason>…</reason>`` + a parseable tool call or an answer; it ends answered."""
    if traj.truncated or traj.final_answer is None or not traj.turn_texts:
        return False
    for k, turn in enumerate(traj.turn_texts):
        text = turn[: -len("<|im_end|>")] if turn.endswith("<|im_end|>") else turn
        if not TURN_RE.fullmatch(text):
            return False
        if "<tool_call>" in text and not isinstance(parse_tool_call(text), ToolCall):
            return False
        if ("<answer>" in text) != (k == len(traj.turn_texts) - 1):
            return False
    return True


def sample_metrics(model, processor, n_tasks: int = 32, seed: int = 99, greedy: bool = False,
                   temperature: float = 1.0) -> dict[str, float]:
    tasks = make_tasks(n_tasks, seed=seed, prefix="eval/")
    loop = AgentLoop(HFEngine(temperature=temperature), StubPythonToolBox(), processor,
                     RolloutConfig(max_turns=4, max_new_tokens=160, max_response_tokens=640))
    loop.engine.bind(model, processor)
    trajs = loop.run(tasks, n=1, greedy=greedy)
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    need = [t for t in trajs if t.task.needs_tool]
    no_need = [t for t in trajs if not t.task.needs_tool]
    return {
        "format_rate": mean([float(well_formed(t)) for t in trajs]),
        "format_reward": mean([format_reward(t.response_text) for t in trajs]),
        "tool_call_rate_needed": mean([float(t.num_tool_calls > 0) for t in need]),
        "tool_call_rate_unneeded": mean([float(t.num_tool_calls > 0) for t in no_need]),
        "tool_error_rate": mean([t.tool_errors / t.num_tool_calls for t in trajs if t.num_tool_calls]),
        "accuracy": mean([float((t.final_answer or "").strip() == str(t.task.answer)) for t in trajs]),
        "n": float(len(trajs)),
    }


if __name__ == "__main__":
    import torch

    from metis.models import build_policy

    torch.manual_seed(0)
    policy, proc = build_policy(name_or_path=sys.argv[1], dtype="float32", attn_implementation="sdpa")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    for mode, kwargs in (("sampled T=1.0", {}), ("greedy", {"greedy": True})):
        print(mode, {k: round(v, 3) for k, v in sample_metrics(policy, proc, n, **kwargs).items()})
