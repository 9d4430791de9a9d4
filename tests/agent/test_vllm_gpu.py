"""The vLLM engine for real (GPU + vLLM only; ``pytest -m gpu tests/agent/test_vllm_gpu.py``).

The tiny policy in bf16 on the GPU: vLLM starts with dummy weights, gets the trainer's pushed,
expands the prompt images to the trainer's ids (checked by the engine), and greedy rollouts
through the agent loop agree with the ``hf`` engine's on the first tokens, with a small
engine/trainer log-prob gap.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import FakeToolBox, make_task
from metis.agent.engines import HFEngine
from metis.agent.loop import AgentLoop, RolloutConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                       reason="needs a CUDA GPU and vLLM (pip install -e '.[gpu]')"),
]


def test_vllm_rollouts_match_hf_greedy(tiny_cache):
    from metis.agent.logprobs import response_logprobs
    from metis.agent.vllm_engine import VLLMEngine
    from metis.models import build_policy

    model, processor = build_policy(tiny={}, cache_dir=f"{tiny_cache}/tiny", dtype="bfloat16",
                                    attn_implementation="sdpa")
    model = model.cuda()
    config = RolloutConfig(max_turns=2, max_new_tokens=16, max_response_tokens=256)
    engine = VLLMEngine(temperature=0.0, gpu_memory_utilization=0.2, max_model_len=4096, enforce_eager=True)
    engine.bind(model, processor)
    fast = AgentLoop(engine, FakeToolBox(), processor, config).run([make_task()], n=2, greedy=True)
    engine.after_rollout()
    hf = HFEngine()
    hf.bind(model, processor)
    ref = AgentLoop(hf, FakeToolBox(), processor, config).run([make_task()], n=2, greedy=True)
    assert engine.stats["weight_pushes"] == 1
    for a, b in zip(ref, fast):
        assert a.response_ids[:4] == b.response_ids[:4]  # bf16 kernels differ: only the first tokens
        assert len(b.engine_logprobs) == sum(b.response_mask)
    with torch.no_grad():
        mine, _ = response_logprobs(model, fast, processor.tokenizer.pad_token_id or 0)
    row = fast[0]
    positions = [j for j, m in enumerate(row.response_mask) if m]
    gap = (mine[0, positions].float().cpu() - torch.tensor(row.engine_logprobs)).abs().mean()
    assert float(gap) < 0.1
