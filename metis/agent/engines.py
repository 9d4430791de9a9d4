"""Rollout engines: how a batch of live trajectories gets its next turn of tokens.

``hf`` (transformers models, no extra dependency) works everywhere and is the default. ``vllm`` is
the fast engine on GPUs (see :mod:`metis.agent.vllm_engine`); it is optional and fails at start-up
with an install hint when vLLM is missing.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from metis.agent.batching import model_inputs
from metis.core.trajectory import Trajectory


class Engine(Protocol):
    """What the agent loop and the trainer need from a rollout engine."""

    def bind(self, model, processor) -> None: ...
    def after_rollout(self) -> None: ...
    def sync_weights(self, model) -> None: ...
    def generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False) -> list[list[int]]: ...


@dataclass
class _Prefix:
    """The KV cache of the first ``len(ids)`` tokens of one trajectory (one turn's leftovers)."""

    ref: Any  # weakref to the trajectory: an entry never outlives or changes owner
    ids: list[int]  # the cached tokens
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V), [kv_heads, len(ids), head_dim]
    pos_end: int  # the M-RoPE position of the next token
    images: int  # images of ``traj.encoded`` already inside the cache
    weights: int  # the engine's weight generation the cache was computed with (see sync_weights)


class HFEngine:
    """Batched generation with a transformers model, stopping on any of ``stop_ids``.

    With ``kv_cache=True`` (the default, for Qwen3-VL-style models) the engine runs its own
    decode loop:

    * the KV cache of every live trajectory is kept across tool turns, so a turn only encodes the
      new tokens (the previous turn's last token and the forced observation, images included);
    * the rollouts of one prompt share the prompt's prefill (encoded once, then copied);
    * a row that hits a stop token leaves the batch at once (no padding steps for finished rows);
    * ``on_finish(i, ids)`` (optional) is called as soon as row ``i`` of ``trajs`` is finished, so
      the caller can start its tool call while the other rows keep decoding.

    Greedy decoding gives the same tokens as ``kv_cache=False`` (plain ``model.generate`` on the
    re-encoded context, the reference path); sampling draws from the same distribution
    (temperature, then top-k, then top-p, as ``generate``) but consumes random numbers differently.
    Caches live only for the rollout: :meth:`release` (called by the agent loop at the end of a
    run), :meth:`after_rollout` and :meth:`sync_weights` drop them, and an entry computed before the
    last :meth:`sync_weights` (the trainer calls it after every update) is never used.

    ``logits_processors``: optional ``transformers``-style processors ``f(input_ids, scores)``
    applied before the token bans and sampling (both paths), e.g. to script a policy in benchmarks.
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 max_batch_size: int = 64, kv_cache: bool = True,
                 logits_processors: list[Callable] | None = None) -> None:
        if temperature < 0:
            raise ValueError(f"rollout.temperature must be >= 0, got {temperature}")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_batch_size = max_batch_size
        self.kv_cache = kv_cache
        self.logits_processors = list(logits_processors or [])
        self.model = None
        self.processor = None
        self._prefix: dict[int, _Prefix] = {}
        self._cache_kwarg: str | None = None
        self._generation = 0  # bumped by bind / sync_weights: caches of older weights are stale
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "decode_steps": 0}

    def bind(self, model, processor) -> None:
        self.model, self.processor = model, processor
        self._generation += 1
        self._prefix.clear()
        self._cache_kwarg = None

    def after_rollout(self) -> None:
        """Drop the kept KV caches (generation shares the trainer's weights: nothing else to free)."""
        self._prefix.clear()

    def sync_weights(self, model) -> None:
        """Nothing to push (generation uses the trainer's module); cached prefixes are stale."""
        self._generation += 1
        self._prefix.clear()

    def release(self, trajs: Sequence[Trajectory]) -> None:
        """Forget the caches of ``trajs`` (finished trajectories)."""
        for t in trajs:
            self._prefix.pop(id(t), None)

    # ---- dispatch ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False, on_finish: Callable[[int, list[int]], None] | None = None,
                 ) -> list[list[int]]:
        if self.model is None:
            raise RuntimeError("engine.bind(model, processor) must be called before generate")
        cached = self.kv_cache and self._supports_cache()
        out: list[list[int]] = []
        for start in range(0, len(trajs), self.max_batch_size):
            chunk = trajs[start:start + self.max_batch_size]
            if cached:
                done = None if on_finish is None else (lambda i, ids, s=start: on_finish(s + i, ids))
                out.extend(self._generate_cached(chunk, max_new_tokens, stop_ids, greedy, done))
            else:
                rows = self._generate(chunk, max_new_tokens, stop_ids, greedy)
                if on_finish is not None:
                    for i, ids in enumerate(rows):
                        on_finish(start + i, ids)
                out.extend(rows)
        return out

    def _supports_cache(self) -> bool:
        if self._cache_kwarg is None:
            inner = getattr(self.model, "model", None)
            params = inspect.signature(self.model.forward).parameters
            ok = inner is not None and hasattr(inner, "get_rope_index") and "logits_to_keep" in params \
                and "mm_token_type_ids" in inspect.signature(inner.get_rope_index).parameters
            name = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else ""
            self._cache_kwarg = name if ok and name else ""
        return bool(self._cache_kwarg)

    def _sampling(self, greedy: bool) -> dict[str, Any]:
        return dict(do_sample=False) if greedy or self.temperature == 0 else dict(
            do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    # ---- the reference path: model.generate on the re-encoded context -------------------------
    def _generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                  greedy: bool) -> list[list[int]]:
        tok = self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        param = next(self.model.parameters())
        inputs = model_inputs(trajs, pad_id, self.model.config.image_token_id, param.device, param.dtype)
        extra: dict[str, Any] = {}
        if self.logits_processors:
            from transformers import LogitsProcessorList

            extra["logits_processor"] = LogitsProcessorList(self.logits_processors)
        was_training = self.model.training
        self.model.eval()
        try:
            generated = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad_id,
                use_cache=True, suppress_tokens=suppressed_ids(tok), **self._sampling(greedy), **extra,
            )
        finally:
            self.model.train(was_training)
        new = generated[:, inputs["input_ids"].shape[1]:].tolist()
        return [cut_at_stop(row, stop_ids) for row in new]

    # ---- the fast path: own decode loop with kept KV caches ---------------------------------
    def _weights_version(self) -> int:
        return self._generation

    def _lookup(self, traj: Trajectory, version: int) -> _Prefix | None:
        entry = self._prefix.get(id(traj))
        if entry is None:
            return None
        ids = traj.input_ids
        if entry.ref() is not traj or entry.weights != version or len(entry.ids) >= len(ids) \
                or ids[:len(entry.ids)] != entry.ids:
            self._prefix.pop(id(traj), None)  # stale (other weights, or the loop cut the turn)
            return None
        return entry

    def _forward(self, **kwargs):
        cache = kwargs.pop("cache")
        kwargs[self._cache_kwarg] = cache
        return self.model(**kwargs, use_cache=True, logits_to_keep=1)

    def _generate_cached(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                         greedy: bool, on_finish) -> list[list[int]]:
        from transformers import DynamicCache

        model, tok = self.model, self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        image_id = model.config.image_token_id
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        version = self._weights_version()

        # 1. what each row still has to encode; identical rows (a group's shared prompt) once
        entries = [self._lookup(t, version) for t in trajs]
        unique: dict[tuple, int] = {}
        row_of: list[int] = []
        todo: list[tuple[Trajectory, _Prefix | None]] = []
        for t, e in zip(trajs, entries):
            done_images = e.images if e is not None else 0
            grid = t.encoded.grid_thw[done_images:]
            key = (id(e) if e is not None else None, tuple(t.input_ids[len(e.ids) if e else 0:]),
                   id(t.encoded.pixel_values) if grid.numel() else None, done_images)
            if key not in unique:
                unique[key] = len(todo)
                todo.append((t, e))
            row_of.append(unique[key])

        # 2. one batched prefill of the uncached suffixes: [left pad | cache | pad | suffix]
        n_layers = None
        cached_len = [len(e.ids) if e is not None else 0 for _, e in todo]
        suffixes = [t.input_ids[c:] for (t, _), c in zip(todo, cached_len)]
        width_c, width_s = max(cached_len), max(len(s) for s in suffixes)
        u = len(todo)
        ids = torch.full((u, width_s), pad_id, dtype=torch.long)
        mask = torch.zeros((u, width_c + width_s), dtype=torch.long)
        for r, (s, c) in enumerate(zip(suffixes, cached_len)):
            ids[r, width_s - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width_c - c:width_c] = 1
            mask[r, width_c + width_s - len(s):] = 1
        suffix_mask = mask[:, width_c:]
        mm = (ids == image_id).long() * suffix_mask
        pixels, grids = [], []
        for t, e in todo:
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
        offsets = torch.tensor([e.pos_end if e is not None else 0 for _, e in todo], device=device)
        rope = rope + offsets.view(1, -1, 1)
        pos_end = (rope.masked_fill(suffix_mask.to(device)[None] == 0, -1).amax(dim=(0, 2)) + 1)
        cache = DynamicCache()
        if width_c:
            n_layers = len(next(e for _, e in todo if e is not None).layers)
            for layer in range(n_layers):
                ref_k, ref_v = next(e for _, e in todo if e is not None).layers[layer]
                k = ref_k.new_zeros((u, ref_k.shape[0], width_c, ref_k.shape[2]))
                v = ref_v.new_zeros((u, ref_v.shape[0], width_c, ref_v.shape[2]))
                for r, (_, e) in enumerate(todo):
                    if e is not None:
                        k[r, :, width_c - len(e.ids):] = e.layers[layer][0]
                        v[r, :, width_c - len(e.ids):] = e.layers[layer][1]
                cache.update(k, v, layer)
        self.stats["prefill_tokens"] += int(suffix_mask.sum())
        self.stats["reused_tokens"] += sum(cached_len)
        was_training = model.training
        model.eval()
        try:
            out = self._forward(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=rope,
                                cache=cache, mm_token_type_ids=mm.to(device), **vision)
            logits = out.logits[:, -1]
            # expand the unique rows to the batch
            index = torch.tensor(row_of, device=device)
            if u != len(trajs) or row_of != list(range(u)):
                cache.batch_select_indices(index)
                logits, mask, pos_end = logits[index], mask[index.cpu()], pos_end[index]
            return self._decode(trajs, cache, logits, mask.to(device), pos_end, max_new_tokens, stop_ids,
                                greedy, on_finish, version, pad_id)
        finally:
            model.train(was_training)

    def _decode(self, trajs, cache, logits, mask, pos, max_new_tokens, stop_ids, greedy, on_finish, version,
                pad_id) -> list[list[int]]:
        device = logits.device
        banned = torch.tensor(suppressed_ids(self.processor.tokenizer), dtype=torch.long, device=device)
        stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
        sample = not (greedy or self.temperature == 0)
        live = list(range(len(trajs)))  # original row of each batch row
        gen: list[list[int]] = [[] for _ in trajs]
        context = None
        if self.logits_processors:  # left-padded full ids, as model.generate hands them to processors
            width = max(len(t.input_ids) for t in trajs)
            context = torch.full((len(trajs), width), pad_id, dtype=torch.long, device=device)
            for r, t in enumerate(trajs):
                context[r, width - len(t.input_ids):] = torch.tensor(t.input_ids, dtype=torch.long)
        for step in range(max_new_tokens):
            scores = logits.float()
            for proc in self.logits_processors:
                scores = proc(context, scores)
            if banned.numel():
                scores[:, banned] = -float("inf")
            nxt = self._pick(scores) if sample else scores.argmax(-1)
            toks = nxt.tolist()
            for b, t in enumerate(toks):
                gen[live[b]].append(t)
            finished = torch.isin(nxt, stops)
            if step == max_new_tokens - 1:
                finished[:] = True
            if bool(finished.any()):
                fin = finished.nonzero().flatten().tolist()
                for b in fin:
                    self._keep(trajs[live[b]], cache, b, mask[b], int(pos[b]), gen[live[b]], version)
                    if on_finish is not None:
                        on_finish(live[b], gen[live[b]])
                if len(fin) == len(live):
                    break
                keep = (~finished).nonzero().flatten()
                cache.batch_select_indices(keep)
                mask, pos, nxt = mask[keep], pos[keep], nxt[keep]
                if context is not None:
                    context = context[keep]
                live = [live[b] for b in keep.tolist()]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            if context is not None:
                context = torch.cat([context, nxt[:, None]], dim=1)
            out = self._forward(input_ids=nxt[:, None], attention_mask=mask,
                                position_ids=pos.view(1, -1, 1).expand(3, -1, 1), cache=cache)
            self.stats["decode_steps"] += 1
            logits = out.logits[:, -1]
            pos = pos + 1
        return [cut_at_stop(row, stop_ids) for row in gen]

    def _pick(self, scores: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k, top-p (as transformers' warpers, in that order), then one draw."""
        scores = scores / self.temperature
        if self.top_k and self.top_k > 0:
            k = min(self.top_k, scores.shape[-1])
            kth = torch.topk(scores, k, dim=-1).values[..., -1, None]
            scores = scores.masked_fill(scores < kth, -float("inf"))
        if self.top_p is not None and self.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(scores, descending=False)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - self.top_p)
            remove[..., -1:] = False
            scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), -float("inf"))
        probs = torch.softmax(scores, dim=-1)
        # one categorical draw per row by inverse CDF: one uniform number per row, much cheaper on
        # CPU than torch.multinomial (or an exponential race), same distribution; a token of
        # probability 0 is never drawn (side="right" skips flat steps of the CDF)
        cdf = probs.cumsum(-1)
        u = torch.rand((probs.shape[0], 1), dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)

    def _keep(self, traj, cache, b: int, mask_row: torch.Tensor, pos_end: int, new: list[int], version) -> None:
        """Store row ``b``'s cache (pads removed) for the trajectory's next turn."""
        valid = mask_row.bool()
        layers = []
        for layer in cache.layers:
            layers.append((layer.keys[b][:, valid].clone(), layer.values[b][:, valid].clone()))
        ids = traj.input_ids + new[:-1]  # the last token is not fed yet
        if layers and layers[0][0].shape[1] != len(ids):
            return  # bookkeeping mismatch: recompute next turn rather than trust the cache
        self._prefix[id(traj)] = _Prefix(ref=weakref.ref(traj), ids=ids, layers=layers, pos_end=pos_end,
                                         images=int(traj.encoded.grid_thw.shape[0]), weights=version)


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
