"""The image placeholder and the one image resize (Qwen-VL's ``smart_resize`` rule).

Every image a model sees (prompt images, tool observations, synthetic SFT data) goes through
:func:`fit_image`, so that its sides are multiples of the vision patch stride and its pixel count
stays within the processor's bounds.

The sandboxed Python worker cannot import ``metis``; it carries the same arithmetic in
``metis/tools/_sandbox_protocol.py`` and ``tests/core/test_core_images.py`` checks the two agree.
"""

from __future__ import annotations

import math

from PIL import Image

# The literal a question, an observation or a stored message holds once per image, in order.
IMAGE_PLACEHOLDER = "<image>"

MIN_PIXELS = 4096
MAX_PIXELS = 5120 * 32 * 32


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Qwen-VL style resize target: sides multiples of ``factor``, pixel count in [min, max].

    Extreme aspect ratios are clamped to 200:1 instead of raising.
    """
    height, width = max(1, int(height)), max(1, int(width))
    if max(height, width) / min(height, width) > 200:
        if height > width:
            height = width * 200
        else:
            width = height * 200
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def fit_image(img: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
              factor: int = 32) -> Image.Image:
    """RGB, sides multiples of ``factor``, pixel count within [min_pixels, max_pixels] (bicubic)."""
    img = img.convert("RGB")
    h, w = smart_resize(img.height, img.width, factor, min_pixels, max_pixels)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BICUBIC)
    return img
