"""The fast paths give the same outputs as the reference paths.

* ``HFEngine(kv_cache=True)`` (own decode loop, KV caches kept across tool turns, shared prompt
  prefill, finished rows dropped) vs ``kv_cache=False`` (``model.generate`` on the re-encoded
  context): identical greedy tokens, masks and images over multi-turn rollouts with image
  observations;
* ``response_logprobs`` (LM head on the response positions only) vs the full-logits reference:
  equal within 1e-5, entropies too;
* a cached prefix is never reused after an in-place weight change;
* the sampler's top-k / top-p filtering keeps the same tokens as transformers' warpers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from helpers import FakeToolBox, make_task, tasks_with_turns
from metis.agent.batching import model_inputs, response_positions, response_tensors
from metis.agent.engines import HFEngine
from metis.agent.logprobs import response_logprobs
from metis.agent.loop import AgentLoop, RolloutConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.common import ScriptedToolCalls  # noqa: E402  (the benchmark's scripted tool-call policy)


def rollouts(tiny_policy, kv_cache, turns=(1, 2, 0), n=2, greedy=True, free_tokens=12):
    model, processor = tiny_policy
    forcer = ScriptedToolCalls(processor.tokenizer, free_tokens=free_tokens)
    engine = HFEngine(kv_cache=kv_cache, logits_processors=[forcer])
    engine.bind(model, processor)
    loop = AgentLoop(engine, FakeToolBox(), processor, RolloutConfig(max_turns=4, max_new_tokens=40,
                                                                      max_response_tokens=1024))
    torch.manual_seed(0)
    return engine, loop.run(tasks_with_turns(turns), n=n, greedy=greedy)


def test_kv_cached_greedy_generation_is_identical(tiny_policy):
    _, ref = rollouts(tiny_policy, kv_cache=False)
    engine, fast = rollouts(tiny_policy, kv_cache=True)
    assert engine.stats["reused_tokens"] > 0  # the cache was really used across turns
    assert [t.num_tool_calls for t in fast] == [1, 1, 2, 2, 0, 0]
    for a, b in zip(ref, fast):
        assert a.response_ids == b.response_ids
        assert a.response_mask == b.response_mask
        assert torch.equal(a.encoded.grid_thw, b.encoded.grid_thw)  # observation images (FakeToolBox) too
        assert (a.truncated, a.num_turns) == (b.truncated, b.num_turns)
    assert not engine._prefix  # the loop released every cache at the end of the run


def test_free_generation_identical_and_batch_order_independent(tiny_policy):
    """Rows of different lengths leave the batch at different steps; greedy text is unchanged."""
    model, processor = tiny_policy
    _, ref = rollouts(tiny_policy, kv_cache=False, turns=(0, 1), n=1, free_tokens=30)
    _, fast = rollouts(tiny_policy, kv_cache=True, turns=(0, 1), n=1, free_tokens=30)
    assert [a.response_ids for a in ref] == [b.response_ids for b in fast]


def reference_logprobs(model, trajs, pad_id, with_entropy=False):
    """The full-logits computation the fast path replaces."""
    param = next(model.parameters())
    inputs = model_inputs(trajs, pad_id, model.config.image_token_id, param.device, param.dtype)
    logits = model(**inputs, use_cache=False).logits
    rows, cols, valid = response_positions(trajs)
    targets, _ = response_tensors(trajs)
    logp_all = torch.log_softmax(logits[rows, cols].float(), dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * valid
    ent = -(logp_all.exp() * logp_all).sum(-1) * valid if with_entropy else None
    return logp, ent


@pytest.mark.parametrize("n", [1, 3])
def test_logprobs_fast_paths_match_full_logits(tiny_policy, n):
    """n=1: distinct prompts (LM head on response positions only); n=3: groups share the prompt
    forward (rows shuffled, as a PPO mini-batch); image observations in the responses."""
    model, processor = tiny_policy
    _, trajs = rollouts(tiny_policy, kv_cache=True, turns=(2, 0, 1), n=n, greedy=n == 1)
    assert len({len(t.response_ids) for t in trajs}) > 1  # ragged responses
    trajs = [trajs[i] for i in torch.randperm(len(trajs), generator=torch.Generator().manual_seed(0)).tolist()]
    with torch.no_grad():
        ref, ref_ent = reference_logprobs(model, trajs, 0, with_entropy=True)
        fast, fast_ent = response_logprobs(model, trajs, 0, with_entropy=True)
    assert fast.shape == ref.shape
    assert torch.allclose(fast, ref, atol=1e-5, rtol=0)
    assert torch.allclose(fast_ent, ref_ent, atol=1e-5, rtol=0)
    # gradients flow the same way
    model.zero_grad()
    response_logprobs(model, trajs, 0)[0].sum().backward()
    g_fast = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    reference_logprobs(model, trajs, 0)[0].sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    assert len(g_fast) == len(g_ref)
    for a, b in zip(g_fast, g_ref):  # float32 summation order: equal to 1e-5 of the gradient's scale
        assert (a - b).abs().max() <= 1e-5 * max(1.0, float(b.abs().max()))


def test_cached_prefix_is_not_reused_after_a_weight_update(tiny_policy):
    model, processor = tiny_policy
    model = type(model)(model.config)
    model.load_state_dict(tiny_policy[0].state_dict())
    engine = HFEngine(kv_cache=True)
    engine.bind(model, processor)
    loop = AgentLoop(engine, FakeToolBox(), processor, RolloutConfig(max_turns=1, max_new_tokens=4))
    trajs = loop.run([make_task()], n=1, greedy=True)
    traj = trajs[0]
    out = engine.generate([traj], 3, loop.stop_ids, greedy=True)  # leaves a cache entry for traj
    traj.add_model_tokens(out[0], "")
    assert engine._lookup(traj, engine._weights_version()) is not None  # valid: would be reused
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # an in-place update, as an optimizer step
    engine.sync_weights(model)  # what the trainer does after every update
    assert engine._lookup(traj, engine._weights_version()) is None  # stale: dropped
    reused = engine.stats["reused_tokens"]
    got = engine.generate([traj], 3, loop.stop_ids, greedy=True)
    assert engine.stats["reused_tokens"] == reused
    fresh = HFEngine(kv_cache=False)
    fresh.bind(model, processor)
    assert got == fresh.generate([traj], 3, loop.stop_ids, greedy=True)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.7), (5, 1.0), (20, 0.9)])
def test_sampler_filters_like_transformers(top_k, top_p):
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    scores = torch.randn(4, 50)
    engine = HFEngine(temperature=1.0, top_k=top_k, top_p=top_p)
    kept = []
    orig = torch.softmax

    def capture(x, dim=-1):
        probs = orig(x, dim=dim)
        kept.append(probs > 0)
        return probs

    torch.softmax = capture
    try:
        engine._pick(scores.clone())
    finally:
        torch.softmax = orig
    ref = scores.clone()
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1.0:
        ref = TopPLogitsWarper(top_p)(None, ref)
    assert torch.equal(kept[-1], ref > -float("inf"))
    # the draw follows the distribution: empirical frequencies of 2,000 draws within 0.05
    probs = torch.softmax(ref[:1], -1)
    draws = torch.stack([engine._pick(scores[:1].clone()) for _ in range(2000)]).flatten()
    freq = torch.bincount(draws, minlength=50).float() / draws.numel()
    assert (freq - probs[0]).abs().max() < 0.05
    assert set(draws.tolist()) <= set(torch.nonzero(probs[0] > 0).flatten().tolist())
