"""Helpers shared by the SFT tests."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch


@contextlib.contextmanager
def one_thread_when_busy() -> Iterator[None]:
    """One intra-op thread while the machine has more runnable processes than cores.

    Seen on the shared 2-core machine: with a load average of ~10, torch's two OpenMP threads
    spin-wait on each other and a tiny training step gets 5-7x slower than with one thread.
    """
    before = torch.get_num_threads()
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
