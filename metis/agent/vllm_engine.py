"""The vLLM rollout engine: colocated in the training process, token-in token-out.

Status: written against vLLM's offline ``LLM`` API (``generate`` with ``prompt_token_ids`` and
``multi_modal_data``, ``sleep``/``wake_up``, weight loading through the driver worker's model);
vLLM is not installable on the machines this project was developed on (no CUDA here, no
network on the GPU machine), so this engine has not been run yet. It fails at start-up with
an install hint when vLLM is missing. The ``hf`` engine is the tested default.

Design:
* one ``vllm.LLM`` in the training process (``enable_sleep_mode``: its weights and KV cache are
  released while the trainer runs the update, and re-acquired for the next rollout);
* the trainer's weights are pushed after every update (:meth:`sync_weights`), gathered from
  FSDP2 shards when sharded;
* prompts go in as token ids with each image's placeholder run collapsed to one
  ``<|image_pad|>`` (vLLM expands it with its own processor, configured with the same pixel
  bounds), and the engine's per-token log-probs come back so the trainer can log the
  trainer/engine log-prob gap (the loss always uses log-probs recomputed by the trainer).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Sequence

from metis.agent.engines import suppressed_ids
from metis.core.trajectory import Trajectory

INSTALL_HINT = ("rollout=vllm needs vLLM on a CUDA machine: pip install -e '.[gpu]' (or pip install vllm); "
                "use rollout=hf elsewhere")


def collapse_image_pads(ids: list[int], image_token_id: int) -> list[int]:
    """Replace each run of ``<|image_pad|>`` tokens by a single one (vLLM expands it again)."""
    out: list[int] = []
    for token in ids:
        if token == image_token_id and out and out[-1] == image_token_id:
            continue
        out.append(token)
    return out


class VLLMEngine:
    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 gpu_memory_utilization: float = 0.5, tensor_parallel_size: int = 1,
                 max_model_len: int = 32768, enable_sleep_mode: bool = True, enforce_eager: bool = False,
                 min_pixels: int | None = None, max_pixels: int | None = None, max_batch_size: int = 1024) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ImportError(INSTALL_HINT)
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("rollout=vllm needs a CUDA GPU; use rollout=hf on this machine")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.llm_kwargs: dict[str, Any] = dict(
            gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len, enable_sleep_mode=enable_sleep_mode, enforce_eager=enforce_eager,
            limit_mm_per_prompt={"image": 64},
        )
        if min_pixels is not None and max_pixels is not None:
            self.llm_kwargs["mm_processor_kwargs"] = {"min_pixels": min_pixels, "max_pixels": max_pixels}
        self.max_batch_size = max_batch_size
        self.sleep_between = enable_sleep_mode
        self.llm = None
        self.model = self.processor = None
        self.last_logprobs: dict[str, list[float]] = {}

    def bind(self, model, processor) -> None:
        self.model, self.processor = model, processor

    def _ensure_llm(self) -> None:
        if self.llm is None:
            from vllm import LLM

            path = getattr(self.model.config, "_name_or_path", None)
            if not path:
                raise ValueError("the policy has no name_or_path for vLLM to load its architecture from")
            self.llm = LLM(model=path, dtype="bfloat16", **self.llm_kwargs)
        elif self.sleep_between:
            self.llm.wake_up()

    def generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False) -> list[list[int]]:
        from vllm import SamplingParams

        self._ensure_llm()
        tok = self.processor.tokenizer
        params = SamplingParams(
            max_tokens=max_new_tokens, stop_token_ids=list(stop_ids), temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p, top_k=-1 if greedy or not self.top_k else self.top_k,
            logprobs=0, skip_special_tokens=False, detokenize=False,
            logits_processors=None, bad_words=None,
        )
        banned = set(suppressed_ids(tok))
        prompts = [{"prompt_token_ids": collapse_image_pads(t.input_ids, self.model.config.image_token_id),
                    "multi_modal_data": {"image": list(t.images)} if t.images else None} for t in trajs]
        prompts = [{k: v for k, v in p.items() if v is not None} for p in prompts]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for traj, out in zip(trajs, outputs):
            ids = list(out.outputs[0].token_ids)
            if any(i in banned for i in ids):  # vLLM has no suppress list here: cut before a forbidden token
                ids = ids[: next(k for k, i in enumerate(ids) if i in banned)]
            logprobs = out.outputs[0].logprobs or []
            self.last_logprobs[traj.traj_id] = [next(iter(lp.values())).logprob for lp in logprobs[: len(ids)]]
            result.append(ids)
        return result

    def after_rollout(self) -> None:
        if self.llm is not None and self.sleep_between:
            self.llm.sleep(level=1)

    def sync_weights(self, model) -> None:
        """Push the trainer's current weights into the vLLM model (full tensors, rank-local)."""
        if self.llm is None:
            return
        if self.sleep_between:
            self.llm.wake_up()
        state = ((name, value.full_tensor() if hasattr(value, "full_tensor") else value)
                 for name, value in model.state_dict().items())
        worker = self.llm.llm_engine.model_executor.driver_worker
        runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
        runner.model.load_weights(weights=state)
        if self.sleep_between:
            self.llm.sleep(level=1)
