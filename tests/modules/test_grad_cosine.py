"""The gradient-cosine diagnostic from local dot products (no full-gradient gather)."""

from __future__ import annotations

import torch

from metis.modules.sharding import split_gradient_dots


def test_cosine_from_split_dots_equals_the_cosine_of_the_whole_gradients():
    g = torch.Generator().manual_seed(0)
    a = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g), None]
    b = [torch.randn(5, 3, generator=g), None, torch.randn(2, generator=g)]
    total = [x + y for x, y in zip(a[:1], b[:1])] + [a[1], b[2]]
    whole_a = torch.cat([a[0].flatten(), a[1], torch.zeros(2)])
    whole_b = torch.cat([b[0].flatten(), torch.zeros(7), b[2]])
    expected = float(torch.nn.functional.cosine_similarity(whole_a, whole_b, dim=0))
    # two "ranks" each holding half of every tensor: summing their dots is the all-reduce
    halves = [[None if x is None else x.flatten()[i::2] for x in xs] for xs in (a, total) for i in (0, 1)]
    dots = [sum(v) for v in zip(split_gradient_dots(halves[0], halves[2]), split_gradient_dots(halves[1], halves[3]))]
    ab, aa, bb = dots
    assert abs(ab / (aa * bb) ** 0.5 - expected) < 1e-6
