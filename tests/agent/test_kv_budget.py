"""The hf engine's KV-cache budget: the arithmetic, and budgeted rollouts equal to unbudgeted ones.

A tiny budget admits one or two rows per batch, so kept caches are evicted (their trajectories
wait and are re-prefilled) and prefills are cut into groups; greedy rollouts must still give the
same tokens as the unbudgeted engine and as plain ``model.generate`` (``kv_cache=False``), and
the cache actually held must never exceed the budget.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from types import SimpleNamespace

from helpers import FakeToolBox, tasks_with_turns
from metis.agent.engines import HFEngine
from metis.agent.kv_budget import (GIB, batch_footprint, budget_tokens, evictions, kv_bytes_per_token,
                                   prefill_groups)
from metis.agent.loop import AgentLoop, RolloutConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import ScriptedToolCalls  # noqa: E402  (the benchmark's scripted tool-call policy)


def test_qwen3_vl_8b_costs_144_kib_per_token():
    from metis.models.configs import qwen3_vl_config

    class Tok:
        def convert_tokens_to_ids(self, t):
            return 7

    cfg = qwen3_vl_config(Tok())
    assert kv_bytes_per_token(cfg, torch.bfloat16) == 36 * 8 * 128 * 2 * 2 == 144 * 1024
    assert kv_bytes_per_token(cfg, torch.float32) == 2 * 144 * 1024
    assert budget_tokens(40, 144 * 1024) == 40 * GIB // (144 * 1024)
    flat = SimpleNamespace(num_hidden_layers=2, num_attention_heads=4, hidden_size=64)  # no GQA, no head_dim
    assert kv_bytes_per_token(flat, torch.float16) == 2 * 4 * 16 * 2 * 2
    with pytest.raises(ValueError, match="kv_cache_gib"):
        budget_tokens(0, 10)


def test_footprint_groups_and_evictions():
    assert batch_footprint([], 5) == 0
    assert batch_footprint([(10, 2), (0, 30)], 5) == 2 * (10 + 30 + 5)  # [pad | kept | pad | suffix] layout
    assert prefill_groups([(0, 10)] * 5, None) == [[0, 1, 2, 3, 4]]
    assert prefill_groups([(0, 10)] * 5, 20) == [[0, 1], [2, 3], [4]]
    assert prefill_groups([(0, 50), (0, 5)], 20) == [[0], [1]]  # an oversized row gets a group of its own
    kept = [("a", 10), ("b", 20), ("c", 30)]  # soonest needed first
    assert evictions(kept, 0) == []
    assert evictions(kept, 25) == ["c"]
    assert evictions(kept, 31) == ["c", "b"]
    assert evictions(kept, 1000) == ["c", "b", "a"]


def run(tiny_policy, **engine_kw):
    model, processor = tiny_policy
    engine = HFEngine(logits_processors=[ScriptedToolCalls(processor.tokenizer, free_tokens=12)], **engine_kw)
    engine.bind(model, processor)
    loop = AgentLoop(engine, FakeToolBox(), processor, RolloutConfig(max_turns=4, max_new_tokens=40,
                                                                      max_response_tokens=1024))
    return engine, loop.run(tasks_with_turns((2, 1, 0)), n=2, greedy=True)


def test_budgeted_rollouts_wait_reprefill_and_match(tiny_policy):
    model, _ = tiny_policy
    _, ref = run(tiny_policy, kv_cache=False)  # plain model.generate on the re-encoded context
    free, unbudgeted = run(tiny_policy)
    longest = max(len(t.input_ids) for t in ref)
    per_token = kv_bytes_per_token(model.config, torch.float32)
    tokens = int(1.5 * (longest + 40))  # one row always fits, rarely two: the others wait
    engine, budgeted = run(tiny_policy, kv_cache_gib=tokens * per_token / GIB, max_prefill_tokens=longest)
    assert engine.budget == tokens
    for a, b, c in zip(ref, unbudgeted, budgeted):
        assert a.response_ids == b.response_ids == c.response_ids
        assert a.response_mask == c.response_mask
        assert torch.equal(a.encoded.grid_thw, c.encoded.grid_thw)
    assert [t.num_tool_calls for t in budgeted] == [2, 2, 1, 1, 0, 0]
    assert engine.stats["evicted_tokens"] > 0  # kept caches were dropped for rows that had to wait...
    assert engine.stats["prefill_tokens"] > free.stats["prefill_tokens"]  # ...and re-prefilled later
    assert engine.stats["batches"] > free.stats["batches"]
    assert 0 < engine.stats["peak_kv_tokens"] <= tokens < free.stats["peak_kv_tokens"]
    assert not engine._prefix


def test_budget_smaller_than_one_trajectory_is_a_clear_error(tiny_policy):
    model, _ = tiny_policy
    per_token = kv_bytes_per_token(model.config, torch.float32)
    with pytest.raises(ValueError, match="rollout.engine.kv_cache_gib"):
        run(tiny_policy, kv_cache_gib=50 * per_token / GIB)
    with pytest.raises(ValueError, match="kv_cache_gib"):
        HFEngine(kv_cache_gib=0)
