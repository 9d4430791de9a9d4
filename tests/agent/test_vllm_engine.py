"""The vLLM engine against the API of the pinned vLLM releases, without vLLM.

``fake_vllm`` builds a ``vllm`` module from signatures recorded from each release's source
(``tests/agent/vllm_api/``): any keyword, prompt key or sampling field that release does not
have fails, and so does loading weights or generating while asleep. Generation is scripted, so
the agent loop's per-trajectory path can be compared with the turn-synchronous one.
"""

from __future__ import annotations

import threading

import pytest
import torch
from hydra.utils import instantiate

import fake_vllm
from helpers import ANSWER, CALL, FakeToolBox, ScriptedEngine, compose_cfg, make_task
from metis.agent import vllm_engine
from metis.agent.loop import AgentLoop, RolloutConfig
from metis.agent.sampling import suppressed_ids
from metis.agent.vllm_engine import launcher_env

SCRIPTS = [[CALL, CALL, ANSWER], [ANSWER], [CALL, ANSWER]]


def scripted(tok, scripts):
    """``respond`` for the fake: trajectory k's turns in order (k from the request id's order)."""
    order, turn = {}, {}

    def respond(request_id, prompt_ids, params):
        traj = request_id.split("/")[0]
        k = order.setdefault(traj, len(order))
        t = turn[traj] = turn.get(traj, -1) + 1
        return tok(scripts[k][t], add_special_tokens=False)["input_ids"]

    return respond


@pytest.fixture(params=fake_vllm.VERSIONS)
def fake(request, monkeypatch, tiny_policy):
    model, processor = tiny_policy
    mod = fake_vllm.build(request.param, scripted(processor.tokenizer, SCRIPTS), model.config.image_token_id,
                          fake_vllm.tokens_for(model.config.vision_config.patch_size))
    fake_vllm.install(monkeypatch, mod)
    monkeypatch.setattr(vllm_engine, "_require_cuda", lambda: None)
    # the engine exports the launcher's variables into os.environ (vLLM reads them there): record
    # each one so that teardown restores it, also when it was unset (a leftover RANK / LOCAL_RANK /
    # WORLD_SIZE would make every later multi-process test think it was launched externally)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "0")  # this machine has no GPU 3
    monkeypatch.setenv("SLURM_NTASKS", "16")
    return mod


def vllm_from_config(tiny_policy):
    """The engine as ``rollout=vllm`` builds it (so the config's keys are checked too)."""
    model, processor = tiny_policy
    cfg = compose_cfg("rollout=vllm", "model.min_pixels=4096", "model.max_pixels=65536")
    engine = instantiate(cfg.rollout.engine)
    engine.bind(model, processor)
    return engine


def test_calls_conform_and_per_trajectory_loop_matches(fake, tiny_policy):
    model, processor = tiny_policy
    engine = vllm_from_config(tiny_policy)
    config = RolloutConfig(max_turns=4, max_new_tokens=64, max_response_tokens=2048)
    loop = AgentLoop(engine, FakeToolBox(), processor, config)
    trajs = loop.run([make_task()], n=3)
    ref = AgentLoop(ScriptedEngine(processor, SCRIPTS), FakeToolBox(), processor, config).run([make_task()], n=3)
    for a, b in zip(ref, trajs):
        assert (a.response_ids, a.response_mask) == (b.response_ids, b.response_mask)
        assert (a.num_tool_calls, a.num_turns, a.truncated, a.final_answer) == \
            (b.num_tool_calls, b.num_turns, b.truncated, b.final_answer)
        assert len(b.engine_logprobs) == sum(b.response_mask)  # one per model token
    init = fake.calls[0][1]
    assert init["distributed_executor_backend"] == "external_launcher" and init["load_format"] == "dummy"
    assert init["limit_mm_per_prompt"]["image"] == config.max_images() == 8 + 3 * 8
    assert init["mm_processor_kwargs"] == {"size": {"shortest_edge": 4096, "longest_edge": 65536}}
    assert init["seed"] == 3  # per-rank seed: SLURM rank 3
    llm = engine.llm
    assert llm.env == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "16"}
    # the trainer's weights were pushed before the first request: bf16, base names, all of them
    what = [c[0] for c in fake.calls]
    assert what.index("apply_model") < what.index("reset_prefix_cache") < what.index("add_request")
    assert {n for n, _ in fake.loaded} == {n for n, _ in model.named_parameters()}
    assert {d for _, d in fake.loaded} == {torch.bfloat16}
    # 3 trajectories x their turns, one request each; forbidden tokens banned in sampling
    assert what.count("add_request") == sum(t.num_turns for t in trajs) == 6
    params = engine._params(10, loop.stop_ids, greedy=False)
    assert set(params.logit_bias) == set(suppressed_ids(processor.tokenizer)) - set(loop.stop_ids)
    assert set(params.logit_bias.values()) == {-100.0} and params.logprobs == 0


def test_sleep_wake_push_order_across_steps(fake, tiny_policy, monkeypatch):
    _, processor = tiny_policy
    freed = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: freed.append(len(fake.calls)))
    engine = vllm_from_config(tiny_policy)
    loop = AgentLoop(engine, FakeToolBox(), processor, RolloutConfig(max_turns=4, max_new_tokens=64))
    loop.run([make_task()], n=1)
    engine.after_rollout()
    assert fake.calls[-1] == ("sleep", 2)
    start = len(fake.calls)
    engine.sync_weights(engine.model)  # an optimizer step happened
    fake.calls.append(("marker", None))
    engine.before_rollout()
    steps = [c[0] if c[0] != "wake_up" else c for c in fake.calls[start + 1:]]
    assert steps == [("wake_up", ("weights",)), "apply_model", "reset_prefix_cache", ("wake_up", ("kv_cache",))]
    assert freed == [len(fake.calls) - 1]  # the trainer's cache freed after the push, before the KV cache
    engine.after_rollout()
    engine.before_rollout()  # no update since: no push
    assert [c[0] for c in fake.calls].count("apply_model") == 2


def test_prompt_ids_mismatch_is_a_clear_error(monkeypatch, tiny_policy):
    model, processor = tiny_policy
    mod = fake_vllm.build(fake_vllm.VERSIONS[-1], scripted(processor.tokenizer, SCRIPTS), model.config.image_token_id,
                          lambda image: 1)  # a processor that disagrees with the trainer's
    fake_vllm.install(monkeypatch, mod)
    monkeypatch.setattr(vllm_engine, "_require_cuda", lambda: None)
    engine = vllm_from_config(tiny_policy)
    loop = AgentLoop(engine, FakeToolBox(), processor, RolloutConfig(max_turns=2, max_new_tokens=64))
    with pytest.raises(RuntimeError, match="model.min_pixels / model.max_pixels"):
        loop.run([make_task()], n=2)
    assert mod.calls[-1][0] == "abort_request" and engine.pending() == 0  # the other request is gone


def test_the_fake_rejects_what_vllm_rejects():
    api = fake_vllm.load(fake_vllm.VERSIONS[-1])
    with pytest.raises(fake_vllm.APIError, match="logits_processors"):
        fake_vllm.record(api, "SamplingParams", {"logits_processors": []})
    with pytest.raises(fake_vllm.APIError, match="no_such_engine_arg"):
        fake_vllm.check_call(api, "LLM.__init__", (), {"model": "m", "no_such_engine_arg": 1},
                             extra=api["fields"]["EngineArgs"])
    with pytest.raises(fake_vllm.APIError):
        fake_vllm.check_call(api, "LLM.wake_up", (), {"tag": ["weights"]})
    fake_vllm.check_call(api, "LLM.__init__", (), {"model": "m", "enable_sleep_mode": True},
                         extra=api["fields"]["EngineArgs"])


def test_turns_run_per_trajectory_without_a_barrier(fake, tiny_policy):
    """Trajectory B's tool call blocks until trajectory A has started its third turn: with a
    barrier per turn (A waiting for B's observation) this could never happen."""
    _, processor = tiny_policy
    a_turn3 = threading.Event()
    adds = []
    engine = vllm_from_config(tiny_policy)
    original = engine.submit

    def submit(traj, *args, **kwargs):
        adds.append(traj.traj_id)
        if adds.count(trajs_ids[0]) == 3:
            a_turn3.set()
        return original(traj, *args, **kwargs)

    engine.submit = submit

    class SlowForB(FakeToolBox):
        def execute(self, traj_id, name, arguments):
            if traj_id == trajs_ids[2]:
                assert a_turn3.wait(timeout=30), "A's third turn never started while B's tool call ran"
            return super().execute(traj_id, name, arguments)

    trajs_ids = [f"t0#{i}" for i in range(1, 4)]
    loop = AgentLoop(engine, SlowForB(), processor, RolloutConfig(max_turns=4, max_new_tokens=64))
    trajs = loop.run([make_task()], n=3)
    assert [t.traj_id for t in trajs] == trajs_ids
    assert a_turn3.is_set() and [t.num_tool_calls for t in trajs] == [2, 0, 1]


def test_launcher_env_prefers_torchrun_then_slurm():
    assert launcher_env({"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "SLURM_PROCID": "2"}) | {} == {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29533"}
    env = launcher_env({"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS": "16", "MASTER_ADDR": "n1"})
    assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], env["MASTER_ADDR"]) == ("9", "1", "16", "n1")
    assert launcher_env({})["WORLD_SIZE"] == "1"


def test_hdpo_8b_with_vllm_instantiates(fake):
    """``experiment=hdpo_8b rollout=vllm``: the experiment's hf keys do not break the vLLM engine."""
    cfg = compose_cfg("experiment=hdpo_8b", "rollout=vllm")
    engine = instantiate(cfg.rollout.engine)
    assert engine.llm_kwargs["max_num_seqs"] == 256 and engine.tis_cap == 2.0
    assert cfg.rollout.loop.max_turns == 10
