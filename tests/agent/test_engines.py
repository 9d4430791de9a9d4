"""Engine selection: hf works everywhere; vllm fails at start-up with an install hint without vLLM."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hydra.utils import instantiate

from metis.agent.engines import cut_at_stop
from metis.agent.metrics import engine_logprob_gap
from metis.agent.vllm_engine import collapse_image_pads

from helpers import compose_cfg


def test_stop_cut():
    assert cut_at_stop([5, 6, 7, 8], [7]) == [5, 6, 7]
    assert cut_at_stop([5, 6], [7]) == [5, 6]
    assert collapse_image_pads([1, 9, 9, 9, 2, 9, 3], 9) == [1, 9, 2, 9, 3]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_vllm_fails_at_startup_with_hint():
    cfg = compose_cfg("rollout=vllm")
    with pytest.raises(Exception, match="pip install"):
        instantiate(cfg.rollout.engine)


def test_logprob_gap_uses_model_tokens_only():
    class T:
        response_mask = [1, 0, 1, 1]
        engine_logprobs = [-1.0, -2.0, -3.0]

    lp = torch.tensor([[-1.5, 9.0, -2.0, -2.0]])
    out = engine_logprob_gap([T()], lp)
    assert out["logprob_gap/mean"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert out["logprob_gap/max"] == 1.0
