"""Fixtures of the curation tests: a small planted raw set, loopback judge servers."""

from __future__ import annotations

import pytest

from metis.curation.fake_judge import FakeJudgeServer
from metis.curation.synthetic_raw import make_raw_sets


@pytest.fixture(scope="session")
def raw_small(tmp_path_factory):
    """20 SFT trajectories (one block of every planted kind) + 3 bad rows, 20 RL prompts."""
    return make_raw_sets(tmp_path_factory.mktemp("raw-small"), n_sft=20, n_rl=20, seed=0)


@pytest.fixture
def judge_server():
    servers = []

    def start(**kw) -> FakeJudgeServer:
        server = FakeJudgeServer(**kw)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()
