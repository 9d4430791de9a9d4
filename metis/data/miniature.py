"""The miniature reproduction's task family: text-only arithmetic with a real tool need.

``arith_copy`` (registered into :data:`metis.data.synthetic.FAMILIES`):

* tool-unneeded (``needs_tool=False``): ``What is a * 1?`` (or ``1 * a``), ``a`` in 10..99: the
  answer is a copy of a number in the question, which the tiny model can do without a tool.
* tool-needed (``needs_tool=True``): ``What is a * b?`` with two 2-digit factors (8,100 products):
  far beyond what a ~1 M-parameter model can memorise from a few hundred samples, so the no-tool
  answer is (near) never right; with ``print(a * b)`` the answer is a copy of the observation.

Text only (no image): rollouts skip the vision tower, which makes one RL step cheap enough for
a whole sweep on a 2-core CPU. ``data_source`` is ``synthetic/arithmetic`` and ``meta`` carries
``a``/``b`` so :mod:`metis.data.sft_synthetic` writes the same trajectories as for ``arithmetic``.

``make_splits`` / ``make_sft_records`` wrap the synthetic ones and import this module first, so
Hydra targets here see the family registered.
"""

from __future__ import annotations

import random

from metis.data import sft_synthetic, synthetic
from metis.data.synthetic import FAMILIES
from metis.data.task import Task


@FAMILIES.register("arith_copy")
def arith_copy_task(rng: random.Random, hard: bool, index: int) -> Task:
    if hard:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
    else:
        a, b = rng.randint(10, 99), 1
        if rng.random() < 0.5:
            a, b = b, a
    return Task(
        id=f"arithcopy-{'hard' if hard else 'easy'}-{index}", question=f"What is {a} * {b}?", images=[],
        answer=str(a * b), verifier="numeric", data_source="synthetic/arithmetic", category="math",
        needs_tool=hard, meta={"a": a, "b": b, "family": "arith_copy"},
    )


@FAMILIES.register("arith_zero")
def arith_zero_task(rng: random.Random, hard: bool, index: int) -> Task:
    """Tool-unneeded: ``What is 0 * a?`` (answer 0, no copying needed); tool-needed: ``a * b``,
    two 2-digit factors (as ``arith_copy``)."""
    if hard:
        return arith_copy_task(rng, True, index)
    a, b = rng.randint(10, 99), 0
    if rng.random() < 0.5:
        a, b = b, a
    return Task(
        id=f"arithzero-easy-{index}", question=f"What is {a} * {b}?", images=[], answer="0",
        verifier="numeric", data_source="synthetic/arithmetic", category="math", needs_tool=False,
        meta={"a": a, "b": b, "family": "arith_zero"},
    )


def make_splits(*args, **kwargs):
    return synthetic.make_splits(*args, **kwargs)


def make_sft_records(*args, **kwargs):
    return sft_synthetic.make_sft_records(*args, **kwargs)
