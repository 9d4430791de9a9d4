"""Weights handed to an inference engine (LoRA merged, base names, bf16, in groups) and the
truncated importance-sampling correction of the engine/trainer log-prob gap."""

from __future__ import annotations

import pytest
import torch

from helpers import make_task
from metis.agent.importance import apply_tis, engine_logprob_tensor, scale_grad, tis_weights
from metis.core.trajectory import EncodedImages, Trajectory
from metis.agent.weight_push import base_name, policy_weights


def test_plain_policy_pushes_every_parameter_in_groups(tiny_policy):
    model, _ = tiny_policy
    names = [n for n, _ in model.named_parameters()]
    pushed = list(policy_weights(model, torch.bfloat16, group_bytes=1))
    assert [n for n, _ in pushed] == names
    assert all(t.dtype == torch.bfloat16 for _, t in pushed)
    ref = dict(model.named_parameters())
    assert all(torch.equal(t, ref[n].detach().to(torch.bfloat16)) for n, t in pushed)


def test_lora_is_merged_under_base_names(tiny_policy):
    from metis.models.loading import apply_lora

    model, _ = tiny_policy
    base = type(model)(model.config)
    base.load_state_dict(model.state_dict())
    peft_model = apply_lora(base, r=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # a trained adapter: B is zero at init
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    pushed = dict(policy_weights(peft_model, torch.float32))
    merged = peft_model.merge_and_unload()
    want = dict(merged.named_parameters())
    assert set(pushed) == set(want)
    changed = 0
    for name, value in pushed.items():
        assert torch.allclose(value, want[name].detach(), atol=1e-6), name
        changed += not torch.equal(value, dict(model.named_parameters())[name].detach())
    assert changed > 0  # the adapters really were folded in
    assert base_name("base_model.model.model.layers.0.q_proj.base_layer.weight") == "model.layers.0.q_proj.weight"


def traj(mask, engine_lp):
    t = Trajectory(task=make_task(), traj_id="x", group_id=0, prompt_ids=[1], images=[], encoded=EncodedImages.empty())
    t.response_ids, t.response_mask, t.engine_logprobs = [5] * len(mask), list(mask), list(engine_lp)
    return t


def test_tis_weights_positions_and_gradient():
    t = traj([1, 0, 1, 1], [-1.0, -2.0, -0.1])
    values, known = engine_logprob_tensor([t, traj([1], [])], 5)
    assert known.tolist() == [[True, False, True, True, False], [False] * 5]
    assert values[0, [0, 2, 3]].tolist() == pytest.approx([-1.0, -2.0, -0.1])
    old = torch.tensor([[-1.5, 0.0, -1.0, -0.1, 0.0]])
    w = tis_weights(old, values[:1], known[:1], cap=2.0)
    assert w.tolist()[0] == pytest.approx([float(torch.exp(torch.tensor(-0.5))), 1.0, 2.0, 1.0, 1.0])
    x = torch.tensor([[0.3, -0.2, 0.5]], requires_grad=True)
    y = scale_grad(x, torch.tensor([[2.0, 0.5, 1.0]]))
    assert torch.equal(y.detach(), x.detach())  # same values: ratios and metrics unchanged
    y.sum().backward()
    assert x.grad.tolist() == [[2.0, 0.5, 1.0]]


def test_apply_tis_is_off_without_engine_logprobs_or_cap():
    lp = torch.zeros(1, 2, requires_grad=True)
    same, metrics = apply_tis(lp, lp.detach(), [traj([1, 1], [])], torch.ones(1, 2), cap=2.0)
    assert same is lp and metrics == {}
    same, metrics = apply_tis(lp, lp.detach(), [traj([1, 1], [-1.0, -1.0])], torch.ones(1, 2), cap=None)
    assert same is lp and metrics == {}
    out, metrics = apply_tis(lp, lp.detach(), [traj([1, 1], [-1.0, 0.0])], torch.ones(1, 2), cap=2.0)
    assert metrics == {"tis/weight_mean": pytest.approx(1.5), "tis/clipped_frac": 0.5}
    with pytest.raises(ValueError, match="tis_cap"):
        tis_weights(lp, lp, torch.ones(1, 2, dtype=torch.bool), cap=0)
