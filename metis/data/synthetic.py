"""Synthetic image + question tasks with checkable answers and known tool necessity.

Two families, each with an easy half (answerable directly) and a hard half (needs the Python
tool), so the need for a tool is a property of the sample, recorded in ``Task.needs_tool``:

* ``arithmetic``: a product shown in an image and asked in text; one-digit factors are easy,
  four-digit factors need ``python`` to compute.
* ``zoom``: a number written in an image; large glyphs are readable at the model's input
  resolution, a tiny number in a random spot of a large canvas needs a crop/zoom through Python.

Deliberate simplification: PIL's built-in bitmap font, solid backgrounds.
"""

from __future__ import annotations

import random
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from metis.core.task import Task
from metis.utils.registry import Registry

FAMILIES: Registry[Callable[[random.Random, bool, int], Task]] = Registry("synthetic task family")

_COLORS = [(220, 40, 40), (40, 160, 60), (40, 80, 220), (230, 180, 20), (150, 50, 200)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


@FAMILIES.register("arithmetic")
def arithmetic_task(rng: random.Random, hard: bool, index: int) -> Task:
    lo, hi = (1000, 9999) if hard else (1, 9)
    a, b = rng.randint(lo, hi), rng.randint(lo, hi)
    img = Image.new("RGB", (224, 224), (255, 255, 255))
    ImageDraw.Draw(img).text((12, 96), f"{a} x {b}", fill=(0, 0, 0), font=_font(28))
    return Task(
        id=f"arith-{'hard' if hard else 'easy'}-{index}", question=f"<image>What is {a} * {b}?",
        images=[img], answer=str(a * b), verifier="numeric", data_source="synthetic/arithmetic",
        category="math", needs_tool=hard, meta={"a": a, "b": b},
    )


@FAMILIES.register("zoom")
def zoom_task(rng: random.Random, hard: bool, index: int) -> Task:
    value = rng.randint(10, 99)
    color = rng.choice(_COLORS)
    if hard:  # a tiny number somewhere on a large canvas: unreadable after downscaling
        img = Image.new("RGB", (1024, 1024), (245, 245, 245))
        x, y = rng.randint(16, 960), rng.randint(16, 990)
        ImageDraw.Draw(img).text((x, y), str(value), fill=color, font=_font(10))
    else:
        img = Image.new("RGB", (224, 224), (245, 245, 245))
        ImageDraw.Draw(img).text((60, 50), str(value), fill=color, font=_font(96))
    return Task(
        id=f"zoom-{'hard' if hard else 'easy'}-{index}", question="<image>What number is written in the image?",
        images=[img], answer=str(value), verifier="numeric", data_source="synthetic/zoom",
        category="perception", needs_tool=hard, meta={"value": value},
    )


def make_tasks(n: int, seed: int = 0, families: tuple[str, ...] = ("arithmetic", "zoom"),
               hard_fraction: float = 0.5, prefix: str = "") -> list[Task]:
    """``n`` tasks cycling over ``families``; a seeded ``hard_fraction`` of them need the tool."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    rng = random.Random(seed)
    tasks = [FAMILIES.get(families[i % len(families)])(rng, rng.random() < hard_fraction, i) for i in range(n)]
    for task in tasks:
        task.id = prefix + task.id
    return tasks


def make_splits(n_train: int, n_val: int, n_test: int, seed: int = 0, **kwargs) -> dict[str, list[Task]]:
    """Disjoint seeded splits (each split has its own seed stream)."""
    return {name: make_tasks(n, seed=seed * 1000 + offset, prefix=f"{name}/", **kwargs)
            for offset, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))}
