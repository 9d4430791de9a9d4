"""Bounded memory of the update's log-probs: the LM head + float32 log-softmax run in chunks.

With a 150k-token vocabulary, the log-probs of a 1,024-token response (forward and backward)
need less extra memory than HALF of one full ``[R, V]`` float32 tensor, which the unchunked path
would allocate several times (logits, log-softmax, its exponential, their gradients). The
chunked results equal the full-logits computation (values, entropies and gradients).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from logprob_memory_run import big_vocab_model, trajectory
from metis.agent.batching import model_inputs, response_positions, response_tensors
from metis.agent.logprobs import response_logprobs

SCRIPT = Path(__file__).resolve().parent / "logprob_memory_run.py"


def full_logits_logprobs(model, trajs):
    """The unchunked reference: every position's logits, one float32 log-softmax."""
    inputs = model_inputs(trajs, 0, model.config.image_token_id)
    logits = model(**inputs, use_cache=False).logits
    rows, cols, valid = response_positions(trajs)
    targets, _ = response_tensors(trajs)
    logp_all = torch.log_softmax(logits[rows, cols].float(), dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * valid
    return logp, -(logp_all.exp() * logp_all).sum(-1) * valid


@pytest.mark.timeout(900)
def test_chunked_logprobs_memory_is_bounded_for_a_150k_vocabulary(tiny_policy, tiny_cache, tmp_path):
    out = tmp_path / "mem.json"
    # a fixed mmap threshold: every large tensor is mapped and unmapped on its own, so the resident
    # size follows live memory (glibc's dynamic threshold would otherwise move freed 20 MB chunks
    # into the heap, where they stay resident: a flaky measurement, not a real cost)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, str(SCRIPT), f"{tiny_cache}/tiny", "1024", "32", str(out)],
                          capture_output=True, text=True, timeout=850, cwd=SCRIPT.parents[2], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(out.read_text())
    assert m["full_logits_mb"] == pytest.approx(585.9, abs=0.1)  # 1024 x 150k float32
    assert m["extra_mb"] < 0.5 * m["full_logits_mb"], m


@pytest.mark.parametrize("shared_prompt", [False, True])
def test_chunked_logprobs_equal_the_full_logits(tiny_policy, tiny_cache, shared_prompt):
    model = big_vocab_model(f"{tiny_cache}/tiny")
    a, b = trajectory(12, 40, seed=1), trajectory(12, 25, seed=2)
    b.prompt_ids = list(a.prompt_ids)  # a group: the shared way encodes the prompt once
    trajs = [a, b, trajectory(7, 33, seed=3)]
    ref, ref_ent = full_logits_logprobs(model, trajs)
    ref.sum().backward()
    g_ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    lp, ent = response_logprobs(model, trajs, 0, with_entropy=True, shared_prompt=shared_prompt, chunk_tokens=7)
    lp.sum().backward()
    g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert torch.allclose(lp, ref.detach(), atol=2e-5, rtol=0)
    assert torch.allclose(ent.detach(), ref_ent.detach(), atol=2e-4, rtol=0)
    assert g.keys() == g_ref.keys() and len(g) > 10
    for name in g:
        assert (g[name] - g_ref[name]).abs().max() <= 1e-5 * max(1.0, float(g_ref[name].abs().max())), name
