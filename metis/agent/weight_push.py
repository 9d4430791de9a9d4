"""The trainer's weights as ``(name, tensor)`` pairs in the base model's names, for an inference engine.

:func:`policy_weights` walks the policy's parameters in order and yields them cast to ``dtype``
(bf16 for vLLM), a few at a time:

* parameters sharded by FSDP2 (``DTensor``) are gathered one by one with ``full_tensor()`` in
  groups of at most ``group_bytes``; a group is yielded and dropped before the next is gathered,
  so no full unsharded copy of the model is ever held (every rank must iterate: each gather is a
  collective, and all ranks walk the same names in the same order);
* a PEFT LoRA policy is yielded merged, under the base model's names: ``W + scaling * B @ A`` for
  each adapted ``base_layer`` (computed in fp32), adapter tensors themselves skipped, the
  ``base_model.model.`` prefix and ``.base_layer`` infix removed.

The consumer (``vllm``'s ``model.load_weights``) takes an iterator, so memory stays at one group.
"""

from __future__ import annotations

from typing import Iterator

import torch

PEFT_PREFIX = "base_model.model."


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def base_name(name: str) -> str:
    """A PEFT parameter name in the base model's naming."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return name.replace(".base_layer.", ".")


def _lora_delta(model, name: str, adapter: str) -> torch.Tensor | None:
    """``scaling * B @ A`` for the LoRA module owning ``<module>.base_layer.weight``, gathered, fp32."""
    module = model.get_submodule(name[: -len(".base_layer.weight")])
    if adapter not in getattr(module, "lora_A", {}):
        return None
    a = _full(module.lora_A[adapter].weight.detach()).float()
    b = _full(module.lora_B[adapter].weight.detach()).float()
    return (b @ a) * float(module.scaling[adapter])


def policy_weights(model, dtype: torch.dtype = torch.bfloat16, group_bytes: int = 256 * 2 ** 20,
                   adapter: str = "default") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the policy's weights (LoRA merged, base names) in ``dtype``, ``group_bytes`` at a time."""
    group: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, param in model.named_parameters():
        if ".lora_" in name:  # lora_A / lora_B / lora_embedding_*: folded into their base weights
            continue
        value = _full(param.detach())
        if name.endswith(".base_layer.weight"):
            delta = _lora_delta(model, name, adapter)
            if delta is not None:
                value = value.float() + delta
        group.append((base_name(name), value.to(dtype)))
        size += group[-1][1].numel() * group[-1][1].element_size()
        if size >= group_bytes:
            yield from group
            group, size = [], 0
    yield from group
