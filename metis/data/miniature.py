"""The miniature reproduction's task families, each with a real, per-sample tool need.

``marker`` (visual, V*-like; the family of the report): see :func:`marker_task`.

``make_splits`` / ``make_sft_records`` wrap the synthetic ones and import this module first, so
Hydra targets here see the family registered.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from metis.core.images import fit_image
from metis.core.task import Task
from metis.data import sft_synthetic, synthetic
from metis.data.converters import python_observation
from metis.data.synthetic import FAMILIES

# ----------------------------------------------------------------------------- marker (visual)
MARKER_COLORS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230),
                 "yellow": (230, 230, 30), "cyan": (30, 220, 220), "magenta": (220, 30, 220)}
MARKER_CANVAS = 256      # the model sees it at 64x64 (model.max_pixels=4096): 4x downscaled
MARKER_SMALL = 1         # tool-needed: one pixel; after the 4x downscale its colour spread (~13) is
                         # below the noise's own extremes (~17): neither place nor colour survives
MARKER_LARGE = (128, 192)  # tool-unneeded: 32-48 px of the model's 64 px input
# the one program the cold start learns: find the saturated pixels (the noise's channel spread is
# at most 56, every marker colour's at least 170) and enlarge the centre one to the whole view
MARKER_CODE = ("import numpy as np\n"
               "y, x = np.argwhere(np.ptp(np.asarray(image_1), 2) > 150).mean(0).astype(int)\n"
               "display(image_1.crop((x, y, x + 1, y + 1)).resize((64, 64)))")


def marker_image(rng: random.Random, color: str, size: int, canvas: int = MARKER_CANVAS) -> Image.Image:
    """Colour noise around grey (every channel in 100..156) with one ``size`` px square of ``color``."""
    noise = np.random.default_rng(rng.randrange(2**32))
    pixels = noise.integers(100, 157, size=(canvas, canvas, 3), dtype=np.uint8)
    x, y = rng.randrange(0, canvas - size), rng.randrange(0, canvas - size)
    pixels[y:y + size, x:x + size] = MARKER_COLORS[color]
    return Image.fromarray(pixels, "RGB")


def marker_zoom(img: Image.Image) -> Image.Image:
    """What ``MARKER_CODE`` displays: the same program, run in-process (for the SFT trajectories)."""
    shown: list[Image.Image] = []
    exec(MARKER_CODE, {"image_1": img, "display": shown.append})  # noqa: S102 - our own constant
    return shown[0]


@FAMILIES.register("marker")
def marker_task(rng: random.Random, hard: bool, index: int) -> Task:
    """V*-like: 'What colour is the square?' The large square is readable at the model's input
    resolution; the 1 px one is not (shown by the no-tool cold start, experiments/miniature),
    and the python tool finds and zooms it on the full-resolution image."""
    color = rng.choice(sorted(MARKER_COLORS))
    size = MARKER_SMALL if hard else rng.randint(*MARKER_LARGE)
    return Task(
        id=f"marker-{'hard' if hard else 'easy'}-{index}", question="<image>What color is the square?",
        images=[marker_image(rng, color, size)], answer=color, verifier="exact",
        data_source="synthetic/marker", category="perception", needs_tool=hard,
        meta={"color": color, "size": size, "family": "marker"},
    )


def _marker_tool(task: Task, rng: random.Random):
    obs_images = [fit_image(marker_zoom(task.images[0].convert("RGB")))]
    final = f"The zoomed square is {task.answer}."
    return "Zoom in on the square.", MARKER_CODE, python_observation("", 1), obs_images, final


def _marker_direct(task: Task, rng: random.Random) -> str:
    return f"The square is {task.answer}."


sft_synthetic.EXTRA_FAMILIES["marker"] = (_marker_tool, _marker_direct)


def make_splits(*args, **kwargs):
    return synthetic.make_splits(*args, **kwargs)


def make_sft_records(*args, **kwargs):
    return sft_synthetic.make_sft_records(*args, **kwargs)
