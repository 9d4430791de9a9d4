"""Pack trajectories into model inputs (left padding, images in order)."""

from __future__ import annotations

from typing import Sequence

import torch

from metis.core.trajectory import Trajectory


def model_inputs(
    trajs: Sequence[Trajectory], pad_id: int, image_token_id: int,
    device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Left-padded ``input_ids``/``attention_mask``/``mm_token_type_ids`` and the images of all rows.

    ``mm_token_type_ids`` marks image placeholder tokens (Qwen3-VL needs it for M-RoPE whenever
    ``image_grid_thw`` is given); images are concatenated row by row in the order they appear.
    """
    seqs = [t.input_ids for t in trajs]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attn[row, width - len(seq):] = 1
    inputs = {"input_ids": ids, "attention_mask": attn,
              "mm_token_type_ids": (ids == image_token_id).long() * attn}
    grids = [t.encoded.grid_thw for t in trajs if t.encoded.grid_thw.numel()]
    if grids:
        pixels = torch.cat([t.encoded.pixel_values for t in trajs if t.encoded.grid_thw.numel()])
        inputs["pixel_values"] = pixels.to(dtype) if dtype is not None else pixels
        inputs["image_grid_thw"] = torch.cat(grids)
    return {k: v.to(device) for k, v in inputs.items()}


def response_positions(trajs: Sequence[Trajectory]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors to pull per-response-token log-probs out of left-padded logits.

    Returns ``(rows, cols, valid)`` of shape ``[B, R]`` (``R`` = longest response): the logit at
    ``[rows, cols]`` predicts response token ``j`` of each row; ``valid`` is 0 past a row's end.
    """
    width = max(len(t.input_ids) for t in trajs)
    longest = max(len(t.response_ids) for t in trajs)
    rows = torch.arange(len(trajs)).unsqueeze(1).expand(-1, longest)
    cols = torch.zeros(len(trajs), longest, dtype=torch.long)
    valid = torch.zeros(len(trajs), longest, dtype=torch.long)
    for row, t in enumerate(trajs):
        start = width - len(t.input_ids) + len(t.prompt_ids) - 1
        n = len(t.response_ids)
        cols[row, :n] = torch.arange(start, start + n)
        valid[row, :n] = 1
    return rows, cols, valid


def response_tensors(trajs: Sequence[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded response token ids and loss mask ``[B, R]``."""
    longest = max(len(t.response_ids) for t in trajs)
    ids = torch.zeros(len(trajs), longest, dtype=torch.long)
    mask = torch.zeros(len(trajs), longest, dtype=torch.float32)
    for row, t in enumerate(trajs):
        n = len(t.response_ids)
        ids[row, :n] = torch.tensor(t.response_ids, dtype=torch.long)
        mask[row, :n] = torch.tensor(t.response_mask, dtype=torch.float32)
    return ids, mask


def token_budget_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive positions of ``lengths`` grouped into micro-batches of at most ``budget`` padded tokens.

    A micro-batch of rows costs ``rows x longest row`` tokens (right/left padding to the longest).
    Order is kept (rows of one prompt stay together, so they can share the prompt's forward); a
    single row longer than ``budget`` is a micro-batch of its own.

    >>> token_budget_batches([3, 3, 5, 9, 2], budget=10)
    [[0, 1], [2], [3], [4]]
    """
    if budget < 1:
        raise ValueError(f"module.micro_batch_tokens must be >= 1, got {budget}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, n) > budget:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches
