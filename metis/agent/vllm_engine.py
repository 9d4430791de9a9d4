"""The vLLM rollout engine: one engine per training rank, colocated with the trainer, token-in token-out.

Written against vLLM's offline API as of the range pinned in the ``gpu`` extra (0.22 to 0.25: the
releases built for torch 2.11 and transformers 5); every call is checked without vLLM against
signatures recorded from that source (``tests/agent/vllm_api/``, :mod:`tests.agent.fake_vllm`).
It has not run on a GPU yet (no vLLM on the machines of this project). How it works:

* **Colocated, one engine per rank**: ``vllm.LLM(distributed_executor_backend="external_launcher")``
  in every training process, on that rank's GPU, with ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE``
  taken from the environment (torchrun, Lightning) or from SLURM (``SLURM_PROCID`` ...), and the
  engine core in process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the trainer's weights can be
  loaded into its model directly (``LLM.apply_model``). Each rank samples with its own seed.
* **Memory**: with ``enable_sleep_mode`` the engine sleeps at level 2 while the trainer updates
  (weights and KV cache released); before a rollout it wakes the weights, gets the trainer's
  weights pushed, frees the trainer's cached blocks (``torch.cuda.empty_cache``), then wakes the
  KV cache. The engine starts with ``load_format="dummy"``: the first rollout (also after a
  resume) always pushes the trainer's weights, and so does the first rollout after every update
  (:meth:`sync_weights` marks them stale); the prefix cache is reset after each push.
* **Weights** go over in bf16, a few parameters at a time, gathered from FSDP2 shards, LoRA merged
  under the base names (:mod:`metis.agent.weight_push`).
* **Prompts** are the trainer's token ids with each image's placeholder run collapsed to one
  ``<|image_pad|>``; vLLM expands it again with Qwen3-VL's processor, given the trainer's pixel
  bounds (``size``: shortest/longest edge in pixels) and the image already resized to the size
  the trainer used, so the expanded ids equal the trainer's: checked on the first rollout
  (a mismatch is a clear error). The images-per-prompt limit comes from the agent loop's caps.
* **Sampling**: forbidden tokens (image/turn tokens) get a logit bias of -100 (vLLM's floor), so
  they are not sampled rather than cut afterwards; the sampled tokens' log-probs come back so
  the trainer can log the gap and correct it by truncated importance sampling
  (:mod:`metis.agent.importance`, ``tis_cap``; off with ``tis_cap: null``).
* **No barrier per turn**: requests go in one at a time (``submit``) and come back as they
  finish (``poll``); the agent loop starts a trajectory's tool call, and its next turn, as soon
  as its own turn or tool call is done.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
from typing import Any, Callable, Sequence

import torch

from metis.agent.sampling import suppressed_ids
from metis.core.trajectory import Trajectory
from metis.agent.weight_push import policy_weights

log = logging.getLogger(__name__)
INSTALL_HINT = ("rollout=vllm needs vLLM on a CUDA machine: pip install -e '.[gpu]' (vllm>=0.22,<0.26); "
                "use rollout=hf elsewhere")
BANNED_BIAS = -100.0  # vLLM clamps user logit biases to [-100, 100]


def collapse_image_pads(ids: list[int], image_token_id: int) -> list[int]:
    """Replace each run of ``<|image_pad|>`` tokens by a single one (vLLM expands it again)."""
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(token)
    return out


def launcher_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables vLLM's external launcher needs, from torchrun/Lightning's or SLURM's.

    Existing ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` win; else ``SLURM_PROCID`` / ``SLURM_LOCALID`` /
    ``SLURM_NTASKS``; else a single process. The engine core is kept in process."""
    out = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    for name, slurm, default in (("RANK", "SLURM_PROCID", "0"), ("LOCAL_RANK", "SLURM_LOCALID", "0"),
                                 ("WORLD_SIZE", "SLURM_NTASKS", "1")):
        out[name] = environ.get(name) or environ.get(slurm) or default
    out["MASTER_ADDR"] = environ.get("MASTER_ADDR", "127.0.0.1")
    out["MASTER_PORT"] = environ.get("MASTER_PORT", "29533")
    return out


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("rollout=vllm needs a CUDA GPU; use rollout=hf on this machine")


class VLLMEngine:
    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 gpu_memory_utilization: float = 0.4, max_model_len: int = 32768, enable_sleep_mode: bool = True,
                 enforce_eager: bool = False, min_pixels: int | None = None, max_pixels: int | None = None,
                 max_num_seqs: int = 256, seed: int = 0, tis_cap: float | None = 2.0,
                 push_group_mb: int = 256, check_prompt_ids: bool = True, max_batch_size: int | None = None,
                 kv_cache_gib: float | None = None, max_prefill_tokens: int | None = None) -> None:
        """``max_batch_size`` (the ``hf`` key, e.g. from ``experiment=hdpo_8b rollout=vllm``) is taken
        as ``max_num_seqs``; ``kv_cache_gib`` / ``max_prefill_tokens`` are the ``hf`` engine's and
        are ignored here (vLLM sizes its cache from ``gpu_memory_utilization``)."""
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(INSTALL_HINT)
        if kv_cache_gib is not None or max_prefill_tokens is not None:
            log.warning("rollout.engine.kv_cache_gib / max_prefill_tokens are hf-engine keys; vLLM sizes its "
                        "KV cache from rollout.engine.gpu_memory_utilization")
        max_num_seqs = max_batch_size or max_num_seqs
        if tis_cap is not None and tis_cap <= 0:
            raise ValueError(f"rollout.engine.tis_cap must be > 0 (or null: off), got {tis_cap}")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.llm_kwargs: dict[str, Any] = dict(
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            enable_sleep_mode=enable_sleep_mode, enforce_eager=enforce_eager, max_num_seqs=max_num_seqs,
            dtype="bfloat16", load_format="dummy", enable_prefix_caching=True, tensor_parallel_size=1,
            distributed_executor_backend="external_launcher",
        )
        if min_pixels is not None or max_pixels is not None:  # the keys Qwen3-VL's processor reads
            size = {k: v for k, v in (("shortest_edge", min_pixels), ("longest_edge", max_pixels)) if v is not None}
            self.llm_kwargs["mm_processor_kwargs"] = {"size": size}
        self.seed, self.sleep_mode, self.tis_cap = seed, enable_sleep_mode, tis_cap
        self.push_bytes, self.check_prompt_ids = push_group_mb * 2 ** 20, check_prompt_ids
        self.max_images = 1
        self.llm = None
        self.model = self.processor = None
        self.asleep = False
        self.stale = True  # the engine's weights are not the trainer's yet (dummy at start)
        self.stats = {"weight_pushes": 0, "requests": 0}
        self.last_logprobs: dict[str, list[float]] = {}
        self._requests: dict[str, tuple[Trajectory, int]] = {}
        self._ids = itertools.count()

    # ---- lifecycle ------------------------------------------------------------------------------
    def bind(self, model, processor) -> None:
        self.model, self.processor = model, processor
        self.stale = True

    def set_limits(self, max_images_per_prompt: int) -> None:
        """Images one prompt can hold (the agent loop's caps); read when the engine starts."""
        self.max_images = max(1, int(max_images_per_prompt))

    def _start(self) -> None:
        _require_cuda()
        from vllm import LLM

        env = launcher_env(dict(os.environ))
        os.environ.update(env)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(env["LOCAL_RANK"]))
        path = getattr(self.model.config, "_name_or_path", None)
        if not path:
            raise ValueError("the policy has no name_or_path for vLLM to read its config and processor from")
        self.llm = LLM(model=path, seed=self.seed + int(env["RANK"]),
                       limit_mm_per_prompt={"image": self.max_images, "video": 0}, **self.llm_kwargs)

    def before_rollout(self) -> None:
        """Called by the agent loop on every rank before a rollout: start or wake the engine, and
        push the trainer's weights if they changed (a collective when the policy is sharded)."""
        if self.llm is None:
            self._start()
            self.asleep = False
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        if self.stale:
            self._push_weights()
        if self.asleep:
            torch.cuda.empty_cache()  # the trainer's cached blocks, before the KV cache is re-allocated
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def after_rollout(self) -> None:
        if self.llm is not None:
            self.check_prompt_ids = False  # the first rollout proved that the two processors agree
        if self.llm is not None and self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)  # weights are pushed again before the next rollout: discard both
            self.asleep = True

    def sync_weights(self, model) -> None:
        """The trainer updated ``model``: its weights go over before the next rollout."""
        self.model, self.stale = model, True

    def _push_weights(self) -> None:
        model, dtype, group = self.model, torch.bfloat16, self.push_bytes

        def load(vllm_model) -> None:
            vllm_model.load_weights(weights=policy_weights(model, dtype, group))

        self.llm.apply_model(load)
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self.stale = False
        self.stats["weight_pushes"] += 1

    # ---- requests -------------------------------------------------------------------------------
    def _params(self, max_new_tokens: int, stop_ids: list[int], greedy: bool):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = greedy or self.temperature == 0
        banned = {i: BANNED_BIAS for i in suppressed_ids(self.processor.tokenizer) if i not in stop_ids}
        return SamplingParams(
            max_tokens=max_new_tokens, stop_token_ids=list(stop_ids), temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p, top_k=0 if greedy or not self.top_k else self.top_k,  # 0: off
            logprobs=0, detokenize=False, skip_special_tokens=False, logit_bias=banned or None,
            output_kind=RequestOutputKind.FINAL_ONLY)

    def _prompt(self, traj: Trajectory) -> dict[str, Any]:
        from vllm import TokensPrompt

        cfg = self.model.config
        prompt = TokensPrompt(prompt_token_ids=collapse_image_pads(traj.input_ids, cfg.image_token_id))
        if traj.images:
            patch = int(cfg.vision_config.patch_size)
            sizes = [(int(w) * patch, int(h) * patch) for _, h, w in traj.encoded.grid_thw.tolist()]
            prompt["multi_modal_data"] = {"image": [im.resize(size) if im.size != size else im
                                                    for im, size in zip(traj.images, sizes)]}
        return prompt

    def submit(self, traj: Trajectory, max_new_tokens: int, stop_ids: list[int], greedy: bool = False) -> None:
        """Queue ``traj``'s next turn; it comes back from :meth:`poll` when finished."""
        if self.llm is None or self.asleep or self.stale:
            self.before_rollout()
        request_id = f"{traj.traj_id}/{next(self._ids)}"
        self._requests[request_id] = (traj, len(traj.input_ids))
        self.llm.llm_engine.add_request(request_id, self._prompt(traj), self._params(max_new_tokens, stop_ids, greedy))
        self.stats["requests"] += 1

    def cancel(self) -> None:
        """Abort every request in flight (the loop failed): none may come back in a later run."""
        if self._requests and self.llm is not None:
            self.llm.llm_engine.abort_request(list(self._requests))
        self._requests.clear()

    def pending(self) -> int:
        return len(self._requests)

    def poll(self) -> list[tuple[Trajectory, list[int], list[float]]]:
        """One engine step; the turns it finished: ``(trajectory, new token ids, their log-probs)``."""
        done = []
        for out in self.llm.llm_engine.step():
            if not out.finished or out.request_id not in self._requests:
                continue
            traj, _ = self._requests.pop(out.request_id)
            if self.check_prompt_ids:
                self._check_prompt(traj, out)
            sample = out.outputs[0]
            ids = list(sample.token_ids)
            logprobs = [step[tok].logprob for step, tok in zip(sample.logprobs or [], ids)]
            done.append((traj, ids, logprobs))
        return done

    def _check_prompt(self, traj: Trajectory, out) -> None:
        seen = list(out.prompt_token_ids or [])
        if seen != traj.input_ids:
            n_pad = self.model.config.image_token_id
            raise RuntimeError(
                f"vLLM expanded the prompt of {traj.traj_id} to {len(seen)} tokens "
                f"({seen.count(n_pad)} image tokens), the trainer has {len(traj.input_ids)} "
                f"({traj.input_ids.count(n_pad)}): vLLM's Qwen3-VL processor sees other image sizes; "
                "check model.min_pixels / model.max_pixels and the vLLM version (pinned in the gpu extra)")

    # ---- the turn-synchronous interface (evaluation, curation, the hf-style loop) ---------------
    def generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False, on_finish: Callable[[int, list[int]], None] | None = None,
                 ) -> list[list[int]]:
        index = {id(t): i for i, t in enumerate(trajs)}
        for t in trajs:
            self.submit(t, max_new_tokens, stop_ids, greedy)
        out: list[list[int]] = [[] for _ in trajs]
        while self.pending():
            for traj, ids, logprobs in self.poll():
                i = index[id(traj)]
                out[i] = ids
                self.last_logprobs[traj.traj_id] = logprobs
                if on_finish is not None:
                    on_finish(i, ids)
        return out
