"""The one image resize: metis.core.images, and the sandbox worker's copy of its arithmetic."""

from __future__ import annotations

import itertools

from PIL import Image

from metis.core import format as fmt
from metis.core.images import IMAGE_PLACEHOLDER, fit_image, smart_resize
from metis.data import schema
from metis.tools import _sandbox_protocol, base


def test_sandbox_copy_of_smart_resize_agrees():
    # The worker runs where `metis` cannot be imported, so it carries the arithmetic itself.
    sizes = [1, 3, 31, 32, 33, 100, 257, 1000, 4000, 9000]
    for (h, w), (lo, hi) in itertools.product(itertools.product(sizes, sizes), [(4096, 5120 * 32 * 32), (4096, 256 * 256)]):
        assert smart_resize(h, w, 32, lo, hi) == _sandbox_protocol.smart_resize(h, w, 32, lo, hi), (h, w, lo, hi)


def test_fit_image_bounds_and_identity():
    small = fit_image(Image.new("L", (10, 10)))
    assert small.mode == "RGB" and small.width % 32 == 0 and small.height % 32 == 0
    assert small.width * small.height >= 4096
    big = fit_image(Image.new("RGB", (4000, 3000)), max_pixels=256 * 256)
    assert big.width * big.height <= 256 * 256 and big.width % 32 == 0
    exact = Image.new("RGB", (64, 96))
    assert fit_image(exact).size == (64, 96)


def test_one_placeholder_everywhere():
    assert fmt.IMAGE_PLACEHOLDER is schema.IMAGE_PLACEHOLDER is base.IMAGE_PLACEHOLDER is IMAGE_PLACEHOLDER
