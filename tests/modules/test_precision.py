"""fp32 master weights with bf16 compute follow an fp32 run at the paper's lr (1e-6); bf16 master
weights (the former ``bf16-true``) lose most updates to rounding.

Twenty AdamW steps at lr 1e-6 on the tiny policy, on the RL update's log-prob path, three ways:
fp32 reference; fp32 weights + optimizer state with bf16 autocast compute (``bf16-mixed``, what
FSDP2's ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`` does with sharded fp32
parameters); bf16 weights + optimizer state. Reported: fraction of weights changed, relative
error of the weight change against the fp32 reference.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from metis.agent.logprobs import response_logprobs
from metis.core.trajectory import EncodedImages, Trajectory
from metis.core.task import Task
from metis.modules.sharding import compute_dtype

STEPS, LR = 20, 1e-6


def trajectories(n: int = 4) -> list[Trajectory]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.randint(10, 1500, (40,), generator=g).tolist()
        out.append(Trajectory(task=Task(id=str(i), question="", images=[], answer=""), traj_id=str(i), group_id=i,
                              prompt_ids=ids[:16], images=[], encoded=EncodedImages.empty(), response_ids=ids[16:],
                              response_mask=[1] * 24))
    return out


def train(tiny_policy, weights: torch.dtype, autocast: torch.dtype | None) -> tuple[dict, dict]:
    base, _ = tiny_policy
    model = type(base)(base.config)
    model.load_state_dict(base.state_dict())
    model = model.to(weights).train()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    trajs = trajectories()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    for _ in range(STEPS):
        opt.zero_grad()
        ctx = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
        with ctx:
            logp, _ = response_logprobs(model, trajs, 0, shared_prompt=False)
        (-(logp.float() * adv[:, None]).mean()).backward()
        opt.step()
    return start, {k: v.detach() for k, v in model.named_parameters()}


def changes(start, end, ref_delta=None) -> tuple[float, float, dict]:
    changed = total = 0
    err = norm = 0.0
    delta = {}
    for k in start:
        d = end[k].double() - start[k].double()
        delta[k] = d
        changed += int((d != 0).sum())
        total += d.numel()
        if ref_delta is not None:
            err += float((d - ref_delta[k]).pow(2).sum())
            norm += float(ref_delta[k].pow(2).sum())
    return changed / total, (err / norm) ** 0.5 if ref_delta is not None else 0.0, delta


def test_fp32_master_weights_with_bf16_compute_follow_the_fp32_run(tiny_policy):
    assert compute_dtype("bf16-mixed") == torch.bfloat16 and compute_dtype("32-true") is None
    frac_ref, _, ref = changes(*train(tiny_policy, torch.float32, None))
    frac_mixed, err_mixed, _ = changes(*train(tiny_policy, torch.float32, torch.bfloat16), ref)
    frac_bf16, err_bf16, _ = changes(*train(tiny_policy, torch.bfloat16, None), ref)
    print(f"\nfraction of weights changed after {STEPS} AdamW steps at lr {LR}: fp32 {frac_ref:.3f}, "
          f"fp32 master + bf16 compute {frac_mixed:.3f} (rel. error {err_mixed:.3f}), "
          f"bf16 weights {frac_bf16:.3f} (rel. error {err_bf16:.3f})")
    assert frac_ref > 0.5
    assert frac_mixed == pytest.approx(frac_ref, rel=0.02)
    assert err_mixed < 0.2
    assert frac_bf16 < 0.25 * frac_ref and err_bf16 > 0.5  # the failure the fp32 master weights fix
