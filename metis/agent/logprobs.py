"""Per-token log-probs of trajectories' response tokens under a model (the trainer's forward)."""

from __future__ import annotations

import contextlib
import inspect
from typing import Iterator, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from metis.agent.batching import model_inputs, response_positions
from metis.core.trajectory import Trajectory


DEFAULT_CHUNK_TOKENS = 1024


def response_logprobs(model, trajs: Sequence[Trajectory], pad_id: int, with_entropy: bool = False,
                      shared_prompt: bool | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                      vision_always: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, R]`` (float32) of each response token, and optionally the entropies.

    The vocabulary-sized logits never exist for a whole micro-batch: the LM head is applied to
    ``chunk_tokens`` positions at a time, each chunk's float32 log-softmax is reduced at once to
    the target token's log-prob (and the entropy), and the chunk is recomputed in the backward
    (activation checkpointing), so the head's memory is ``chunk_tokens x V`` floats whatever the
    response length. Positions past a row's response are 0; use the trajectory masks to ignore them.

    Two ways, same numbers (within float rounding; tests/perf):

    * ``shared_prompt``: rollouts of one prompt in the batch (a GRPO group) share the prompt's
      forward: each distinct prompt is encoded once, its KV cache is expanded to its rows
      (gradients flow back through the expansion) and only the responses are encoded per row;
    * otherwise one left-padded forward, with the LM head applied to the last ``R + 1`` positions
      only (every response sits there), not to the (usually much longer) prompts.

    ``shared_prompt=None`` picks the shared way when the model supports it and some rows share a
    prompt (a data-dependent choice: single process only). Under FSDP the caller passes a fixed
    ``True``/``False`` so every rank runs the same sequence of forwards (and of collectives); with
    ``True`` the shared way runs even when no two rows share a prompt.
    """
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    if shared_prompt is None:
        shared_prompt = len(trajs) > 1 and supports_shared_prompt(model)
        if shared_prompt:
            counts = _prompt_image_counts(model, trajs)
            shared_prompt = len(_prompt_groups(trajs, counts)) < len(trajs)
    elif shared_prompt and not supports_shared_prompt(model):
        raise ValueError(f"{type(model).__name__} does not support the shared-prompt forward")
    n_real, width_real = len(trajs), max(len(t.response_ids) for t in trajs)
    if vision_always and getattr(model.config, "vision_config", None) is not None \
            and _lacks_images(model, trajs, shared_prompt):
        trajs = [*trajs, dummy_trajectory(model, pad_id)]
    if shared_prompt:
        counts = _prompt_image_counts(model, trajs)
        logp, entropy = _shared_prompt_logprobs(model, trajs, _prompt_groups(trajs, counts), counts, pad_id,
                                                with_entropy, chunk_tokens)
    else:
        logp, entropy = _plain_logprobs(model, trajs, pad_id, with_entropy, chunk_tokens)
    if len(trajs) > n_real:  # the dummy row: no share of the result, but part of the graph (zero gradients)
        zero = 0.0 * logp[n_real:].sum()
        logp = logp[:n_real, :width_real] + zero
        entropy = entropy[:n_real, :width_real] if entropy is not None else None
    return logp, entropy


def _plain_logprobs(model, trajs, pad_id, with_entropy, chunk_tokens):
    param = next(model.parameters())
    inputs = model_inputs(trajs, pad_id, model.config.image_token_id, param.device, param.dtype)
    rows, cols, valid = response_positions(trajs)
    keep = max(len(t.response_ids) for t in trajs) + 1
    width = inputs["input_ids"].shape[1]
    kwargs = {}
    if keep < width and _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
    else:
        keep = width
    ids = inputs["input_ids"]  # position p predicts token p + 1
    targets = torch.nn.functional.pad(ids[:, width - keep + 1:], (0, 1), value=0)
    with token_logprob_head(model, targets, with_entropy, chunk_tokens):
        out = model(**inputs, use_cache=False, **kwargs).logits  # [B, keep, 1 or 2]
    cols = (cols - (width - keep)).clamp(min=0)  # rows past their response: masked below
    picked = out[rows.to(out.device), cols.to(out.device)]  # [B, R, 1 or 2]
    valid = valid.to(out.device)
    return picked[..., 0] * valid, (picked[..., 1] * valid if with_entropy else None)


# ---- the vision tower in every forward -----------------------------------------------------------

def _lacks_images(model, trajs, shared_prompt: bool) -> bool:
    """Whether some forward of this batch would run without images (shared way: two forwards)."""
    if not shared_prompt:
        return not any(t.encoded.grid_thw.numel() for t in trajs)
    counts = _prompt_image_counts(model, trajs)
    in_prompts = any(n > 0 for n in counts)
    in_responses = any(t.encoded.grid_thw.shape[0] > n for t, n in zip(trajs, counts))
    return not (in_prompts and in_responses)


def dummy_trajectory(model, pad_id: int) -> Trajectory:
    """A tiny trajectory with one blank image in its prompt and one in its response (no model tokens).

    Used as a zero-weight row, so that a forward runs the vision tower (and a rank with nothing to
    train on still joins every collective of an update)."""
    from metis.core.trajectory import EncodedImages
    from metis.core.task import Task

    cfg, vc = model.config, model.config.vision_config
    merge = vc.spatial_merge_size
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2
    image = [cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id]  # one merged token
    grid = torch.tensor([[1, merge, merge]] * 2, dtype=torch.long)
    encoded = EncodedImages(torch.zeros(2 * merge * merge, patch_dim), grid)
    response = [pad_id, *image, pad_id]
    return Trajectory(task=Task(id="dummy", question="", images=[], answer=""), traj_id="dummy", group_id=-1,
                      prompt_ids=[*image, pad_id], images=[], encoded=encoded, response_ids=response,
                      response_mask=[0] * len(response))


# ---- the chunked LM head -------------------------------------------------------------------------

def _chunk_logprobs(logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool) -> torch.Tensor:
    """``[N, V]`` logits -> ``[N, 1 or 2]``: log-prob of each target (and entropy), in float32."""
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return logp.unsqueeze(-1)
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return torch.stack([logp, entropy], dim=-1)


def chunked_token_logprobs(head_forward, hidden: torch.Tensor, targets: torch.Tensor, with_entropy: bool,
                           chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """``head_forward`` (hidden -> logits) applied ``chunk_tokens`` positions at a time.

    ``hidden`` is ``[..., H]`` and ``targets`` its leading shape; returns ``[..., 1 or 2]``. Each
    chunk is checkpointed when gradients are needed: its logits are dropped after the forward and
    recomputed in the backward, so at most one chunk's ``[chunk_tokens, V]`` logits are alive.
    """
    lead = hidden.shape[:-1]
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).to(hidden.device)

    def one(h, t):
        return _chunk_logprobs(head_forward(h), t, with_entropy)

    grad = torch.is_grad_enabled() and hidden.requires_grad
    parts = []
    for start in range(0, flat_h.shape[0], chunk_tokens):
        h, t = flat_h[start:start + chunk_tokens], flat_t[start:start + chunk_tokens]
        parts.append(checkpoint(one, h, t, use_reentrant=False) if grad else one(h, t))
    width = 2 if with_entropy else 1
    out = torch.cat(parts) if parts else flat_h.new_zeros(0, width, dtype=torch.float32)
    return out.view(*lead, width)


@contextlib.contextmanager
def token_logprob_head(model, targets: torch.Tensor | None, with_entropy: bool,
                       chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> Iterator[None]:
    """Within the context, the model's LM head returns ``[B, K, 1 or 2]`` (log-prob of ``targets``
    ``[B, K]`` at each of the K positions it is given, and the entropy) instead of ``[B, K, V]``
    logits; with ``targets=None`` it returns the float32 log-softmax ``[B, K, V]`` (for a few
    positions only).

    The head's own forward is swapped for the duration, so the model's forward (and FSDP's hooks
    around it, which gather the head's weights) runs unchanged.
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (LM head)")
    original = head.forward  # the bound method of the class (LoRA wrappers included)
    own = head.__dict__.get("forward")  # an instance-level forward already there (e.g. accelerate hooks)

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if targets is None:
            return torch.log_softmax(original(hidden).float(), dim=-1)
        if targets.shape != hidden.shape[:-1]:
            raise ValueError(f"LM head got positions {tuple(hidden.shape[:-1])} for targets {tuple(targets.shape)}")
        return chunked_token_logprobs(original, hidden, targets, with_entropy, chunk_tokens)

    head.forward = forward
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


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


def _shared_prompt_logprobs(model, trajs, groups, counts, pad_id, with_entropy, chunk_tokens):
    from transformers import DynamicCache

    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    image_id = model.config.image_token_id
    heads = [trajs[g[0]] for g in groups]
    u, b = len(heads), len(trajs)

    # 1. each distinct prompt once, left-padded: its KV cache and the log-softmax at its last
    #    token (it predicts each row's first response token; [u, 1, V] floats, a few per batch)
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
    with token_logprob_head(model, None, with_entropy):
        first = model(input_ids=p_ids.to(device), attention_mask=p_mask.to(device), position_ids=rope,
                      mm_token_type_ids=p_mm.to(device), **vision, **{_cache_kwarg(model): cache}, use_cache=True,
                      logits_to_keep=1).logits[:, -1]  # [u, V] log-softmax

    # 2. expand to the rows, then every response (right-padded) on top of its prompt's cache. The
    #    second forward always runs (at least one input position, masked when no response has a
    #    second token), so the number of forwards does not depend on the data.
    group_of = torch.empty(b, dtype=torch.long)
    for g, rows in enumerate(groups):
        group_of[rows] = g
    index = group_of.to(device)
    cache.batch_select_indices(index)
    longest = max(max(len(t.response_ids) for t in trajs), 2)
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
    with token_logprob_head(model, r_ids[:, 1:].to(device), with_entropy, chunk_tokens):
        rest = model(input_ids=r_ids[:, :-1].to(device), attention_mask=mask[:, :-1], position_ids=rope[..., :-1],
                     mm_token_type_ids=r_mm[:, :-1].to(device), **vision, **{_cache_kwarg(model): cache},
                     use_cache=True).logits  # [B, longest - 1, 1 or 2]: position j predicts token j + 1
    first_rows = first[index]  # [B, V]
    first_t = r_ids[:, :1].to(device)
    head_lp = first_rows.gather(-1, first_t)
    parts = [head_lp]
    if with_entropy:
        parts.append(-(first_rows.exp() * first_rows).sum(-1, keepdim=True))
    out = torch.cat([torch.stack(parts, dim=-1), rest], dim=1)  # [B, longest, 1 or 2]
    r_mask = r_mask.to(device)
    width = max(len(t.response_ids) for t in trajs)
    logp = (out[..., 0] * r_mask)[:, :width]
    entropy = (out[..., 1] * r_mask)[:, :width] if with_entropy else None
    return logp, entropy


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


def supports_shared_prompt(model) -> bool:
    """Whether ``model`` can run the shared-prompt forward (prefix KV cache expanded to rows).

    Not with gradient checkpointing: transformers' checkpointed layers drop the KV cache in train
    mode, so the responses would be encoded without their prompt."""
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        return False
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "get_rope_index") or not _accepts(model, "logits_to_keep"):
        return False
    if not (_accepts(model, "cache") or _accepts(model, "past_key_values")):
        return False
    try:
        return "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters
    except (TypeError, ValueError):
        return False
