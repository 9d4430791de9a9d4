"""Rollout engines: how a batch of live trajectories gets its next turn of tokens.

``hf`` (transformers ``generate``) works everywhere and is the default. ``vllm`` is the fast
engine on GPUs (see :mod:`metis.agent.vllm_engine`); it is optional and fails at start-up with
an install hint when vLLM is missing.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch

from bench.legacy.batching import model_inputs
from metis.core.trajectory import Trajectory
from metis.utils.registry import Registry




class Engine(Protocol):
    """What the agent loop and the trainer need from a rollout engine."""

    def bind(self, model, processor) -> None: ...
    def after_rollout(self) -> None: ...
    def sync_weights(self, model) -> None: ...
    def generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False) -> list[list[int]]: ...



class HFEngine:
    """Batched ``model.generate`` over left-padded trajectories, stopping on any of ``stop_ids``.

    Deliberate simplification: each turn re-encodes the whole context (no KV cache kept across
    tool turns); the prefix is short on the tiny model and vLLM's prefix cache covers the GPU path.
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 max_batch_size: int = 64) -> None:
        if temperature < 0:
            raise ValueError(f"rollout.temperature must be >= 0, got {temperature}")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_batch_size = max_batch_size
        self.model = None
        self.processor = None

    def bind(self, model, processor) -> None:
        self.model, self.processor = model, processor

    def after_rollout(self) -> None:
        """Nothing to release: generation shares the trainer's weights."""

    def sync_weights(self, model) -> None:
        """Nothing to push: generation uses the trainer's module directly."""

    @torch.no_grad()
    def generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False) -> list[list[int]]:
        if self.model is None:
            raise RuntimeError("engine.bind(model, processor) must be called before generate")
        out: list[list[int]] = []
        for start in range(0, len(trajs), self.max_batch_size):
            out.extend(self._generate(trajs[start:start + self.max_batch_size], max_new_tokens, stop_ids, greedy))
        return out

    def _generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                  greedy: bool) -> list[list[int]]:
        tok = self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        param = next(self.model.parameters())
        inputs = model_inputs(trajs, pad_id, self.model.config.image_token_id, param.device, param.dtype)
        sampling = dict(do_sample=False) if greedy or self.temperature == 0 else dict(
            do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        banned = suppressed_ids(tok)
        was_training = self.model.training
        self.model.eval()
        try:
            generated = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
                use_cache=True, suppress_tokens=banned, **sampling,
            )
        finally:
            self.model.train(was_training)
        new = generated[:, inputs["input_ids"].shape[1]:].tolist()
        return [cut_at_stop(row, stop_ids) for row in new]


# Tokens the policy must never emit: a generated image placeholder would desynchronise the
# image features from the sequence, a generated turn opener would forge a user turn.
FORBIDDEN_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>",
                    "<|endoftext|>")


def suppressed_ids(tokenizer) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in FORBIDDEN_TOKENS if t in vocab]


def cut_at_stop(ids: list[int], stop_ids: list[int]) -> list[int]:
    """Keep tokens up to and including the first stop token (drops the padding after it)."""
    for i, t in enumerate(ids):
        if t in stop_ids:
            return ids[: i + 1]
    return ids
