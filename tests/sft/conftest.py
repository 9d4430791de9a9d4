"""SFT tests run with one intra-op thread while the shared machine is oversubscribed."""

from __future__ import annotations

import pytest
from sft_test_util import one_thread_when_busy


@pytest.fixture(autouse=True)
def _one_thread_when_busy():
    with one_thread_when_busy():
        yield
