"""Synthetic SFT trajectories in the Metis format, built from :mod:`metis.data.synthetic` tasks.

The code in each tool call really solves the task and the observation is what the Metis python
tool returns for it (docs/paper.md, "Rollout format": ``Code execution result:\\n<stdout>`` plus ``\\nImages:\\n<image>``
per displayed image; images resized to multiples of 32 within [4096, 5120*32*32] pixels):

* arithmetic: ``print(a * b)`` -> ``Code execution result:\\n<a*b>\\n``;
* zoom: crop the region around the number (found from the image itself: the bounding box of the
  non-background pixels; ``Task.meta`` has no position) and ``display()`` it enlarged -> the
  observation carries the crop as an image.

Tool use is deliberately "trigger-happy" by default, like the public cold-start data the paper
starts from: ``tool_fraction_unneeded`` (0.9) of the tasks that do not need a tool still call it,
``tool_fraction_needed`` (1.0) of those that need it do. HDPO is what should later prune the
unneeded calls.

Deliberate simplifications: the observation text and images are produced here, without running
``metis.tools`` (another layer); two phrasing templates per case; one tool call per trajectory.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

from PIL import Image, ImageChops

from metis.core.format import build_system_prompt
from metis.core.images import fit_image
from metis.core.task import Task
from metis.data.converters import python_observation, tool_call_text
from metis.data.schema import TrajectoryRecord, split_placeholders
from metis.data.synthetic import make_tasks
from metis.tools.python_tool import PythonTool

# the python tool as the system prompt lists it (the real tool's own spec: one source)
PYTHON_TOOL_SPEC: dict[str, Any] = PythonTool.spec()


def metis_system_prompt() -> str:
    return build_system_prompt([PYTHON_TOOL_SPEC])


def zoom_box(img: Image.Image, margin: int = 8) -> tuple[int, int, int, int]:
    """Box around the non-background pixels (background = the top-left pixel), with a margin."""
    rgb = img.convert("RGB")
    bbox = ImageChops.difference(rgb, Image.new("RGB", rgb.size, rgb.getpixel((0, 0)))).getbbox()
    if bbox is None:
        return 0, 0, rgb.width, rgb.height
    x0, y0, x1, y1 = bbox
    return max(0, x0 - margin), max(0, y0 - margin), min(rgb.width, x1 + margin), min(rgb.height, y1 + margin)


def _msg(role: str, text: str, call: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"role": role, "content": split_placeholders(text), "tool_call": call}


# families defined elsewhere (metis.data.miniature) add their trajectories here:
# name -> (tool(task, rng) -> (reason, code, observation, images, final reason), direct(task, rng) -> reason)
EXTRA_FAMILIES: dict[str, tuple[Callable[..., tuple[str, str, str, list[Image.Image], str]],
                                 Callable[..., str]]] = {}


def _tool_turns(task: Task, family: str, rng: random.Random) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    """Assistant call, tool observation, final assistant answer, and the observation images."""
    answer = str(task.answer)
    if family in EXTRA_FAMILIES:
        reason, code, obs, images, final = EXTRA_FAMILIES[family][0](task, rng)
    elif family == "arithmetic":
        a, b = task.meta["a"], task.meta["b"]
        code = f"print({a} * {b})"
        reason = rng.choice([f"I need {a} * {b}. I will compute the product with Python.",
                             f"The question asks for {a} times {b}; let me run it in Python to be exact."])
        obs, images = python_observation(f"{a * b}\n"), []
        final = rng.choice([f"The code printed {answer}.", f"Python gives {answer}."])
    elif family == "zoom":
        x0, y0, x1, y1 = zoom_box(task.images[0])
        scale = 4 if task.needs_tool else 2
        code = (f"crop = image_1.crop(({x0}, {y0}, {x1}, {y1}))\n"
                f"display(crop.resize((crop.width * {scale}, crop.height * {scale})))")
        crop = task.images[0].convert("RGB").crop((x0, y0, x1, y1))
        images = [fit_image(crop.resize((crop.width * scale, crop.height * scale)))]
        reason = rng.choice(["The number is hard to read at this size. I will crop around it and zoom in.",
                             "Let me crop the region with the number and enlarge it to read it."])
        obs = python_observation("", len(images))
        final = rng.choice([f"The zoomed crop shows the number {answer}.", f"After zooming, the number reads {answer}."])
    else:
        raise ValueError(f"no synthetic SFT trajectory for task family {family!r}")
    call = {"name": "python", "arguments": {"code": code}}
    turns = [_msg("assistant", f"<reason>{reason}</reason>" + tool_call_text("python", call["arguments"]), call),
             _msg("tool", obs),
             _msg("assistant", f"<reason>{final}</reason><answer>{answer}</answer>")]
    return turns, images


def _direct_turn(task: Task, family: str, rng: random.Random) -> dict[str, Any]:
    answer = str(task.answer)
    if family in EXTRA_FAMILIES:
        reason = EXTRA_FAMILIES[family][1](task, rng)
    elif family == "arithmetic":
        a, b = task.meta["a"], task.meta["b"]
        reason = rng.choice([f"{a} times {b} is {answer}.", f"The product of {a} and {b} is {answer}."])
    else:
        reason = rng.choice([f"The image clearly shows the number {answer}.", f"The number written is {answer}."])
    return _msg("assistant", f"<reason>{reason}</reason><answer>{answer}</answer>")


def trajectory_for_task(task: Task, use_tool: bool, rng: random.Random,
                        system_prompt: str | None = None) -> TrajectoryRecord:
    """One Metis-format trajectory that solves ``task`` (with one python call or directly)."""
    family = task.data_source.split("/")[-1]
    messages = [_msg("system", system_prompt if system_prompt is not None else metis_system_prompt()),
                {"role": "user", "content": task.content(), "tool_call": None}]
    images = list(task.images)
    if use_tool:
        turns, obs_images = _tool_turns(task, family, rng)
        messages += turns
        images += obs_images
    else:
        messages.append(_direct_turn(task, family, rng))
    return TrajectoryRecord(
        id=f"sft-{task.id}", messages=messages, images=images, final_answer=str(task.answer),
        ground_truth=[str(task.answer)], source=task.data_source, source_id=task.id,
        meta={"needs_tool": task.needs_tool, "used_tool": use_tool, "family": family,
              "task_meta": json.loads(json.dumps(task.meta, default=str))},
    )


def make_sft_records(n: int = 512, seed: int = 0, families: tuple[str, ...] | list[str] = ("arithmetic", "zoom"),
                     hard_fraction: float = 0.5, tool_fraction_unneeded: float = 0.9,
                     tool_fraction_needed: float = 1.0, system_prompt: str | None = None,
                     answer_noise: float = 0.0) -> list[TrajectoryRecord]:
    """``n`` synthetic trajectories (seeded); see the module docstring for the tool-use mix.

    ``answer_noise``: the share of trajectories whose answer (final reason and ``<answer>``) is
    another answer of the same family, drawn uniformly from the distinct answers in the set; the
    tool call and its observation stay true. A model that learns the data answers right with
    probability about ``1 - answer_noise`` where it perceives the answer: a cold start that is
    deliberately imperfect (experiments/miniature/DECISION_RULES.md, amendment 3). The record keeps
    the true ``ground_truth``; ``meta["noisy_answer"]`` marks it. The noise draws come from their own
    generator, so ``answer_noise=0`` gives exactly the records of before.
    """
    for name, value in (("tool_fraction_unneeded", tool_fraction_unneeded), ("tool_fraction_needed", tool_fraction_needed),
                        ("answer_noise", answer_noise)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    tasks = make_tasks(n, seed=seed, families=tuple(families), hard_fraction=hard_fraction, prefix="sft/")
    rng = random.Random(seed + 7919)
    noise_rng = random.Random(seed + 104729)
    pools: dict[str, list[str]] = {}
    for task in tasks:
        pools.setdefault(task.data_source, []).append(str(task.answer))
    pools = {k: sorted(set(v)) for k, v in pools.items()}
    prompt = system_prompt if system_prompt is not None else metis_system_prompt()
    records = []
    for task in tasks:
        p = tool_fraction_needed if task.needs_tool else tool_fraction_unneeded
        use_tool = rng.random() < p
        others = [a for a in pools[task.data_source] if a != str(task.answer)]
        if answer_noise and others and noise_rng.random() < answer_noise:
            record = trajectory_for_task(dataclasses.replace(task, answer=noise_rng.choice(others)), use_tool, rng, prompt)
            record.ground_truth, record.meta["noisy_answer"] = [str(task.answer)], True
        else:
            record = trajectory_for_task(task, use_tool, rng, prompt)
        records.append(record)
    return records
