"""Token-level helpers shared by the rollout engines: forbidden tokens, stop cuts, one draw."""

from __future__ import annotations

import torch

# Tokens the policy must never emit: a generated image placeholder would desynchronise the
# image features from the sequence, a generated turn opener would forge a user turn. Engines ban
# them in sampling (probability 0), never cut them afterwards.
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


def sample(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k, top-p (as transformers' warpers, in that order), then one draw per row."""
    scores = scores / temperature
    if top_k and top_k > 0:
        k = min(top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cum <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), -float("inf"))
    probs = torch.softmax(scores, dim=-1)
    # one categorical draw per row by inverse CDF: one uniform number per row, much cheaper on
    # CPU than torch.multinomial (or an exponential race), same distribution; a token of
    # probability 0 is never drawn (side="right" skips flat steps of the CDF)
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.shape[0], 1), dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)
