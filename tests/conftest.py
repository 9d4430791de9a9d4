"""Shared fixtures: one tiny model per test session, built into a temporary cache."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("metis-cache"))


@pytest.fixture(scope="session")
def tiny_policy(tiny_cache):
    from metis.models import build_policy

    return build_policy(tiny={}, cache_dir=f"{tiny_cache}/tiny", dtype="float32", attn_implementation="sdpa")


_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                "VLLM_ENABLE_V1_MULTIPROCESSING")


@pytest.fixture(autouse=True)
def _no_leaked_launch_variables():
    """Code under test may export a launcher's variables (the vLLM engine does, as vLLM reads them
    from os.environ). Left behind, they make every later multi-process test in the session look
    launched from outside (no second rank is started, the first waits for it): restore them."""
    before = {k: os.environ.get(k) for k in _LAUNCH_VARS}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
