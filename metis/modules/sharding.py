"""FSDP2 for Qwen3-VL through Lightning's ``ModelParallelStrategy`` (no home-made distributed code).

Wrapping policy: every text decoder layer and every vision block is its own ``fully_shard`` unit
(the natural all-gather granularity of a transformer), then the root (embeddings, merger, LM head).

Precision: the sharded parameters and the optimizer state keep the model's dtype (fp32 at 8B: the
master weights), the all-gathered copies used for compute are cast to :func:`compute_dtype` of the
trainer's precision (``bf16-mixed`` -> bf16), and gradients are reduced in fp32. With bf16 master
weights (``bf16-true``) most updates at lr 1e-6 round away (see docs/scale.md).

Rollouts need whole weights on every rank: ranks generate different numbers of tokens and
turns, so per-forward all-gathers would deadlock. :func:`gathered` unshards every unit once
(one collective per unit, same count on every rank), generation then runs without collectives,
and the units are resharded afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def shard_units(model) -> list[torch.nn.Module]:
    """The modules that become FSDP units: decoder layers and vision blocks of Qwen-VL models."""
    units = []
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("DecoderLayer") or name.endswith("VisionBlock"):
            units.append(module)
    if not units:
        raise ValueError(f"no decoder layers or vision blocks found in {type(model).__name__}")
    return units


def compute_dtype(precision: str | None, model=None) -> torch.dtype | None:
    """The dtype FSDP2 gathers parameters in for compute: bf16 under ``bf16-mixed`` (fp32 master
    weights stay sharded), fp16 under ``16-mixed``; otherwise the parameters' own dtype."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(str(precision))
    if dtype is None and model is not None:
        dtype = next(model.parameters()).dtype
    return dtype


def apply_fsdp2(model, device_mesh, param_dtype: torch.dtype | None = None, reduce_dtype=torch.float32,
                cpu_offload: bool = False) -> None:
    """Shard ``model`` in place over the data-parallel dimension of ``device_mesh``."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = device_mesh["data_parallel"] if "data_parallel" in (device_mesh.mesh_dim_names or ()) else device_mesh
    kwargs = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)}
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for unit in shard_units(model):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered(model) -> Iterator[None]:
    """Whole parameters on this rank for the duration (see module docstring); no-op if unsharded."""
    if not is_sharded(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()


def export_policy(model, processor, path, is_writer: bool = True) -> None:
    """Write ``model`` (gathered from FSDP2 shards if sharded, LoRA merged) and ``processor`` as a HF dir.

    Every rank must call it when the model is sharded (gathering is a collective); only
    ``is_writer`` writes.
    """
    import copy

    state_dict = None
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if getattr(model.config, "tie_word_embeddings", False):  # tied: saved once, as the embedding
            state_dict.pop("lm_head.weight", None)
    if not is_writer:
        return
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload() if state_dict is None else model
    if state_dict is not None:
        model.save_pretrained(path, state_dict=state_dict)
    else:
        model.save_pretrained(path)
    processor.save_pretrained(path)


def local_part(tensor):
    """This rank's part of a (possibly FSDP2-sharded) tensor, or None."""
    if tensor is None:
        return None
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def split_gradient_dots(first: list, total: list) -> list[float]:
    """``[a.b, a.a, b.b]`` over parameters, with a = ``first`` and b = ``total - first`` (local parts;
    ``None`` is zero). Summed over ranks, the cosine of two gradients whose sum is ``total``."""
    dots = torch.zeros(3, dtype=torch.float64)
    for a, t in zip(first, total):
        if a is None and t is None:
            continue
        a = torch.zeros_like(t) if a is None else a
        b = t - a if t is not None else -a
        dots += torch.stack([(a * b).sum(), (a * a).sum(), (b * b).sum()]).double().cpu()
    return dots.tolist()
