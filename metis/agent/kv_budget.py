"""The KV-cache token budget of the ``hf`` engine: how many tokens of cache fit, and who waits.

Everything here is pure arithmetic on token counts, so it is tested without a model.

* :func:`kv_bytes_per_token`: what one token of KV cache costs for a model (all layers, K and V):
  ``layers x kv_heads x head_dim x 2 x dtype bytes``; Qwen3-VL-8B in bf16: 36 x 8 x 128 x 2 x 2 =
  147,456 bytes (144 KiB) per token.
* :func:`budget_tokens`: a budget in GiB as tokens of that model's cache.
* :func:`batch_footprint`: the cache a decode batch can reach: rows are laid out as
  ``[left pad | kept cache | pad | new suffix]`` and grow by one column per decode step, so a batch
  of ``B`` rows takes ``B x (max kept + max suffix + max_new_tokens)`` tokens at most.
* :func:`prefill_groups`: the unique rows of a batch cut into prefill passes of at most
  ``max_tokens`` padded tokens each (the activations of one prefill pass scale with its tokens).
"""

from __future__ import annotations

from typing import Sequence

import torch

GIB = 1024 ** 3


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of KV cache per token (all layers, K and V) for a transformers model ``config``."""
    text = getattr(config, "text_config", None) or config
    layers = int(text.num_hidden_layers)
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return layers * kv_heads * int(head_dim) * 2 * torch.empty(0, dtype=dtype).element_size()


def budget_tokens(gib: float, per_token_bytes: int) -> int:
    """A budget of ``gib`` GiB as tokens of cache (``rollout.engine.kv_cache_gib``)."""
    if gib <= 0:
        raise ValueError(f"rollout.engine.kv_cache_gib must be > 0, got {gib}")
    return int(gib * GIB) // per_token_bytes


def batch_footprint(rows: Sequence[tuple[int, int]], max_new_tokens: int) -> int:
    """Cache tokens a batch of ``(kept, suffix)`` rows can reach by its last decode step."""
    if not rows:
        return 0
    return len(rows) * (max(c for c, _ in rows) + max(s for _, s in rows) + max_new_tokens)


def prefill_groups(rows: Sequence[tuple[int, int]], max_tokens: int | None) -> list[list[int]]:
    """Consecutive groups of row indices whose padded prefill (rows x (max kept + max suffix))
    stays within ``max_tokens``; a row larger than that alone gets a group of its own."""
    if not max_tokens:
        return [list(range(len(rows)))] if rows else []
    groups: list[list[int]] = []
    cur: list[int] = []
    width_c = width_s = 0
    for i, (c, s) in enumerate(rows):
        wc, ws = max(width_c, c), max(width_s, s)
        if cur and (len(cur) + 1) * (wc + ws) > max_tokens:
            groups.append(cur)
            cur, wc, ws = [], c, s
        cur.append(i)
        width_c, width_s = wc, ws
    if cur:
        groups.append(cur)
    return groups


def evictions(kept: Sequence[tuple[object, int]], free: int) -> list[object]:
    """Keys to drop (from the end of ``kept``, ordered soonest-needed first) until ``free`` tokens
    are released; all of them if that is not enough."""
    out: list[object] = []
    for key, tokens in reversed(kept):
        if free <= 0:
            break
        out.append(key)
        free -= tokens
    return out
