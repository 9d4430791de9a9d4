"""Per-token log-probs of trajectories' response tokens under a model (the trainer's forward)."""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from metis.agent.batching import model_inputs, response_positions, response_tensors
from metis.core.trajectory import Trajectory


def response_logprobs(model, trajs: Sequence[Trajectory], pad_id: int, with_entropy: bool = False,
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, R]`` (float32) of each response token, and optionally the entropies.

    Only the logits at response positions go through the (vocabulary-sized) log-softmax, in
    float32. Positions past a row's response are 0; use the trajectory masks to ignore them.

    Two ways, same numbers (within float rounding; tests/perf):

    * rollouts of one prompt in the batch (a GRPO group) share the prompt's forward: each distinct
      prompt is encoded once, its KV cache is expanded to its rows (gradients flow back through the
      expansion) and only the responses are encoded per row;
    * otherwise one left-padded forward, with the LM head applied to the last ``R + 1`` positions
      only (every response sits there), not to the (usually much longer) prompts.
    """
    if len(trajs) > 1 and _supports_prefix(model):
        counts = _prompt_image_counts(model, trajs)
        groups = _prompt_groups(trajs, counts)
        if len(groups) < len(trajs):
            return _shared_prompt_logprobs(model, trajs, groups, counts, pad_id, with_entropy)
    param = next(model.parameters())
    inputs = model_inputs(trajs, pad_id, model.config.image_token_id, param.device, param.dtype)
    rows, cols, valid = response_positions(trajs)
    keep = max(len(t.response_ids) for t in trajs) + 1
    width = inputs["input_ids"].shape[1]
    if keep < width and _accepts(model, "logits_to_keep"):
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        cols = (cols - (width - logits.shape[1])).clamp(min=0)  # rows past their response: masked below
    else:
        logits = model(**inputs, use_cache=False).logits
    targets, _ = response_tensors(trajs)
    picked = logits[rows.to(logits.device), cols.to(logits.device)]  # [B, R, V]
    return _token_logprobs(picked, targets, valid, with_entropy)


def _token_logprobs(picked, targets, valid, with_entropy):
    logp_all = torch.log_softmax(picked.float(), dim=-1)
    logp = logp_all.gather(-1, targets.to(picked.device).unsqueeze(-1)).squeeze(-1)
    logp = logp * valid.to(logp.device)
    entropy = None
    if with_entropy:
        entropy = -(logp_all.exp() * logp_all).sum(-1) * valid.to(logp.device)
    return logp, entropy


# ---- shared prompts ------------------------------------------------------------------------------

def _prompt_image_counts(model, trajs) -> list[int]:
    """How many of each trajectory's images (``traj.encoded``) belong to its prompt."""
    image_id = model.config.image_token_id
    merge = model.config.vision_config.spatial_merge_size ** 2
    counts = []
    for t in trajs:
        pads, seen, n = sum(1 for x in t.prompt_ids if x == image_id), 0, 0
        for grid in t.encoded.grid_thw:
            if seen >= pads:
                break
            seen += int(grid.prod()) // merge
            n += 1
        counts.append(n)
    return counts


def _prompt_pixels(t: Trajectory, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    grid = t.encoded.grid_thw[:n]
    rows = int(grid.prod(-1).sum()) if n else 0
    return t.encoded.pixel_values[:rows], grid


def _prompt_groups(trajs, counts) -> list[list[int]]:
    """Rows with the same prompt (tokens and pixels), in first-seen order."""
    by_ids: dict[tuple, list[list[int]]] = {}
    order: list[list[int]] = []
    for i, t in enumerate(trajs):
        pa, ga = _prompt_pixels(t, counts[i])
        for group in by_ids.setdefault(tuple(t.prompt_ids), []):
            pb, gb = _prompt_pixels(trajs[group[0]], counts[group[0]])
            same = torch.equal(ga, gb) and ((pa.data_ptr() == pb.data_ptr() and pa.shape == pb.shape)
                                            or torch.equal(pa, pb))
            if same:
                group.append(i)
                break
        else:
            group = [i]
            by_ids[tuple(t.prompt_ids)].append(group)
            order.append(group)
    return order


def _shared_prompt_logprobs(model, trajs, groups, counts, pad_id, with_entropy):
    from transformers import DynamicCache

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    image_id = model.config.image_token_id
    heads = [trajs[g[0]] for g in groups]
    u, b = len(heads), len(trajs)

    # 1. each distinct prompt once, left-padded: its KV cache and the logits of its last token
    width_p = max(len(t.prompt_ids) for t in heads)
    p_ids = torch.full((u, width_p), pad_id, dtype=torch.long)
    p_mask = torch.zeros((u, width_p), dtype=torch.long)
    for r, t in enumerate(heads):
        p_ids[r, width_p - len(t.prompt_ids):] = torch.tensor(t.prompt_ids, dtype=torch.long)
        p_mask[r, width_p - len(t.prompt_ids):] = 1
    pix = [_prompt_pixels(trajs[g[0]], counts[g[0]]) for g in groups]
    vision = _vision([p for p, _ in pix], [g for _, g in pix], device, dtype)
    p_mm = (p_ids == image_id).long() * p_mask
    rope, _ = model.model.get_rope_index(p_ids.to(device), mm_token_type_ids=p_mm.to(device),
                                         image_grid_thw=vision.get("image_grid_thw"), attention_mask=p_mask.to(device))
    pos_end = rope.masked_fill(p_mask.to(device)[None] == 0, -1).amax(dim=(0, 2)) + 1
    cache = DynamicCache()
    out = model(input_ids=p_ids.to(device), attention_mask=p_mask.to(device), position_ids=rope,
                mm_token_type_ids=p_mm.to(device), **vision, **{_cache_kwarg(model): cache}, use_cache=True,
                logits_to_keep=1)
    first_logits = out.logits[:, -1]  # predicts each prompt's first response token

    # 2. expand to the rows, then every response (right-padded) on top of its prompt's cache
    group_of = torch.empty(b, dtype=torch.long)
    for g, rows in enumerate(groups):
        group_of[rows] = g
    index = group_of.to(device)
    cache.batch_select_indices(index)
    longest = max(len(t.response_ids) for t in trajs)
    r_ids = torch.full((b, longest), pad_id, dtype=torch.long)
    r_mask = torch.zeros((b, longest), dtype=torch.long)
    pixels, grids = [], []
    for r, t in enumerate(trajs):
        r_ids[r, :len(t.response_ids)] = torch.tensor(t.response_ids, dtype=torch.long)
        r_mask[r, :len(t.response_ids)] = 1
        n = counts[r]
        if t.encoded.grid_thw.shape[0] > n:
            start = int(t.encoded.grid_thw[:n].prod(-1).sum()) if n else 0
            pixels.append(t.encoded.pixel_values[start:])
            grids.append(t.encoded.grid_thw[n:])
    vision = _vision(pixels, grids, device, dtype)
    r_mm = (r_ids == image_id).long() * r_mask
    rope, _ = model.model.get_rope_index(r_ids.to(device), mm_token_type_ids=r_mm.to(device),
                                         image_grid_thw=vision.get("image_grid_thw"), attention_mask=r_mask.to(device))
    rope = rope + pos_end[index].view(1, -1, 1)
    mask = torch.cat([p_mask.to(device)[index], r_mask.to(device)], dim=1)
    logits = None
    if longest > 1:
        logits = model(input_ids=r_ids[:, :-1].to(device), attention_mask=mask[:, :-1], position_ids=rope[..., :-1],
                       mm_token_type_ids=r_mm[:, :-1].to(device), **vision, **{_cache_kwarg(model): cache},
                       use_cache=True).logits
    picked = first_logits[index][:, None]
    if logits is not None:
        picked = torch.cat([picked, logits], dim=1)  # [B, R, V]: position j predicts response token j
    targets, _ = response_tensors(trajs)
    return _token_logprobs(picked, targets, r_mask, with_entropy)


def _vision(pixels, grids, device, dtype) -> dict[str, torch.Tensor]:
    pixels = [p for p, g in zip(pixels, grids) if g.numel()]
    grids = [g for g in grids if g.numel()]
    if not grids:
        return {}
    return {"pixel_values": torch.cat(pixels).to(device, dtype), "image_grid_thw": torch.cat(grids).to(device)}


# ---- capability checks ---------------------------------------------------------------------------

_SIGNATURES: dict[tuple[type, str], bool] = {}


def _accepts(model, name: str) -> bool:
    key = (type(model), name)
    if key not in _SIGNATURES:
        try:
            _SIGNATURES[key] = name in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            _SIGNATURES[key] = False
    return _SIGNATURES[key]


def _cache_kwarg(model) -> str:
    return "cache" if _accepts(model, "cache") else "past_key_values"


def _supports_prefix(model) -> bool:
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "get_rope_index") or not _accepts(model, "logits_to_keep"):
        return False
    if not (_accepts(model, "cache") or _accepts(model, "past_key_values")):
        return False
    try:
        return "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters
    except (TypeError, ValueError):
        return False
