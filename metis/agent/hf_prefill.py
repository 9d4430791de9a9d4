"""The ``hf`` engine's prefill: encode what each row has not cached yet, on top of what it has.

A row is a trajectory with, optionally, a kept KV cache of its first tokens (:class:`Prefix`).
:func:`prefill` runs one batched forward over the uncached suffixes of some rows, laid out as
``[left pad | kept cache | pad | suffix]``, with M-RoPE positions continued from each row's kept
cache and the images not yet inside it; :func:`merge` stacks several such passes (prefill groups,
bounded in tokens so that the activations of one pass stay small) into one batch cache.
A kept cache is consumed: its layers are released as soon as they are copied into the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from metis.core.trajectory import Trajectory


@dataclass
class Prefix:
    """The KV cache of the first ``len(ids)`` tokens of one trajectory (one turn's leftovers)."""

    ref: Any  # weakref to the trajectory: an entry never outlives or changes owner
    ids: list[int]  # the cached tokens
    layers: list  # per layer (K, V), [kv_heads, len(ids), head_dim]; None once consumed
    pos_end: int  # the M-RoPE position of the next token
    images: int  # images of ``traj.encoded`` already inside the cache
    weights: int  # the engine's weight generation the cache was computed with (see HFEngine.sync_weights)


@dataclass
class Prefilled:
    """One prefill pass: its batch cache, attention mask (CPU), last logits and next positions."""

    cache: Any  # transformers DynamicCache, [rows, kv_heads, width, head_dim] per layer
    mask: torch.Tensor  # [rows, width] long, 1 on real tokens
    logits: torch.Tensor  # [rows, vocab], at each row's last token
    pos_end: torch.Tensor  # [rows], the M-RoPE position of the next token


def prefill(model, rows: list[tuple[Trajectory, Prefix | None]], pad_id: int,
            forward: Callable[..., Any]) -> Prefilled:
    """One batched forward over the uncached suffixes of ``rows``; kept caches are consumed."""
    from transformers import DynamicCache

    image_id = model.config.image_token_id
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    cached_len = [len(e.ids) if e is not None else 0 for _, e in rows]
    suffixes = [t.input_ids[c:] for (t, _), c in zip(rows, cached_len)]
    width_c, width_s = max(cached_len), max(len(s) for s in suffixes)
    u = len(rows)
    ids = torch.full((u, width_s), pad_id, dtype=torch.long)
    mask = torch.zeros((u, width_c + width_s), dtype=torch.long)
    for r, (s, c) in enumerate(zip(suffixes, cached_len)):
        ids[r, width_s - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, width_c - c:width_c] = 1
        mask[r, width_c + width_s - len(s):] = 1
    suffix_mask = mask[:, width_c:]
    mm = (ids == image_id).long() * suffix_mask
    pixels, grids = [], []
    for t, e in rows:
        done_images = e.images if e is not None else 0
        grid = t.encoded.grid_thw
        if grid.shape[0] > done_images:
            start = int(grid[:done_images].prod(-1).sum()) if done_images else 0
            pixels.append(t.encoded.pixel_values[start:])
            grids.append(grid[done_images:])
    vision = {}
    if grids:
        vision = {"pixel_values": torch.cat(pixels).to(device, dtype), "image_grid_thw": torch.cat(grids).to(device)}
    rope, _ = model.model.get_rope_index(ids.to(device), mm_token_type_ids=mm.to(device),
                                         image_grid_thw=vision.get("image_grid_thw"),
                                         attention_mask=suffix_mask.to(device))
    offsets = torch.tensor([e.pos_end if e is not None else 0 for _, e in rows], device=device)
    rope = rope + offsets.view(1, -1, 1)
    pos_end = rope.masked_fill(suffix_mask.to(device)[None] == 0, -1).amax(dim=(0, 2)) + 1
    cache = DynamicCache()
    kept = [e for _, e in rows if e is not None]
    if width_c:
        for layer in range(len(kept[0].layers)):
            ref_k, ref_v = kept[0].layers[layer]
            k = ref_k.new_zeros((u, ref_k.shape[0], width_c, ref_k.shape[2]))
            v = ref_v.new_zeros((u, ref_v.shape[0], width_c, ref_v.shape[2]))
            for r, (_, e) in enumerate(rows):
                if e is not None:
                    k[r, :, width_c - len(e.ids):] = e.layers[layer][0]
                    v[r, :, width_c - len(e.ids):] = e.layers[layer][1]
            for e in kept:  # consumed: the batch holds the only copy from here on
                e.layers[layer] = None
            cache.update(k, v, layer)
    out = forward(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=rope, cache=cache,
                  mm_token_type_ids=mm.to(device), **vision)
    return Prefilled(cache, mask, out.logits[:, -1], pos_end)


def merge(parts: list[Prefilled]) -> Prefilled:
    """Stack prefill passes into one batch (each left-padded to the widest); layer by layer, each
    part's layer released once copied."""
    if len(parts) == 1:
        return parts[0]
    from transformers import DynamicCache

    width = max(p.mask.shape[1] for p in parts)
    rows = sum(p.mask.shape[0] for p in parts)
    cache = DynamicCache()
    for layer in range(len(parts[0].cache.layers)):
        ref = parts[0].cache.layers[layer].keys
        k = ref.new_zeros((rows, ref.shape[1], width, ref.shape[3]))
        v = torch.zeros_like(k)
        r = 0
        for p in parts:
            src = p.cache.layers[layer]
            n, w = src.keys.shape[0], src.keys.shape[2]
            k[r:r + n, :, width - w:] = src.keys
            v[r:r + n, :, width - w:] = src.values
            src.keys = src.values = None
            r += n
        cache.update(k, v, layer)
    mask = torch.cat([torch.nn.functional.pad(p.mask, (width - p.mask.shape[1], 0)) for p in parts])
    return Prefilled(cache, mask, torch.cat([p.logits for p in parts]), torch.cat([p.pos_end for p in parts]))
