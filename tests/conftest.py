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
