"""Rollout engines: how a batch of live trajectories gets its next turn of tokens.

``hf`` (transformers models, no extra dependency) works everywhere and is the default. ``vllm`` is
the fast engine on GPUs (see :mod:`metis.agent.vllm_engine`); it is optional and fails at start-up
with an install hint when vLLM is missing.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Callable, Protocol, Sequence

import torch

from metis.agent.batching import model_inputs
from metis.agent.hf_prefill import Prefix, merge, prefill
from metis.agent.kv_budget import batch_footprint, budget_tokens, evictions, kv_bytes_per_token, prefill_groups
from metis.agent.sampling import FORBIDDEN_TOKENS, cut_at_stop, sample, suppressed_ids
from metis.core.trajectory import Trajectory

__all__ = ["Engine", "HFEngine", "FORBIDDEN_TOKENS", "cut_at_stop", "suppressed_ids"]


class Engine(Protocol):
    """What the agent loop and the trainer need from a rollout engine."""

    def bind(self, model, processor) -> None: ...
    def after_rollout(self) -> None: ...
    def sync_weights(self, model) -> None: ...
    def generate(self, trajs: Sequence[Trajectory], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False) -> list[list[int]]: ...


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

    Memory: ``kv_cache_gib`` (optional) bounds the KV cache the engine holds, kept caches and the
    batch in flight together, converted to tokens with the model's per-token cost
    (:mod:`metis.agent.kv_budget`; Qwen3-VL-8B: 144 KiB per bf16 token). A batch takes the
    longest run of waiting rows (at most ``max_batch_size``) whose cache can reach at most the
    budget by its last decode step; kept caches of other trajectories are dropped to make room
    (those needed last first) and their trajectories are re-prefilled when admitted. Greedy
    outputs do not depend on the budget. ``max_prefill_tokens`` (optional) cuts a batch's prefill
    into passes of at most that many padded tokens, which bounds the prefill activations.
    ``stats['peak_kv_tokens']`` is the most cache observed held (measured on the tensors).

    ``logits_processors``: optional ``transformers``-style processors ``f(input_ids, scores)``
    applied before the token bans and sampling (both paths), e.g. to script a policy in benchmarks.
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 max_batch_size: int = 64, kv_cache: bool = True, kv_cache_gib: float | None = None,
                 max_prefill_tokens: int | None = None, logits_processors: list[Callable] | None = None) -> None:
        if temperature < 0:
            raise ValueError(f"rollout.temperature must be >= 0, got {temperature}")
        if kv_cache_gib is not None and kv_cache_gib <= 0:
            raise ValueError(f"rollout.engine.kv_cache_gib must be > 0 (or null: no budget), got {kv_cache_gib}")
        if max_prefill_tokens is not None and max_prefill_tokens <= 0:
            raise ValueError(f"rollout.engine.max_prefill_tokens must be > 0 (or null), got {max_prefill_tokens}")
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.max_batch_size = max_batch_size
        self.kv_cache = kv_cache
        self.kv_cache_gib, self.max_prefill_tokens = kv_cache_gib, max_prefill_tokens
        self.budget: int | None = None  # kv_cache_gib in tokens of the bound model's cache
        self.logits_processors = list(logits_processors or [])
        self.model = None
        self.processor = None
        self._prefix: dict[int, Prefix] = {}
        self._cache_kwarg: str | None = None
        self._generation = 0  # bumped by bind / sync_weights: caches of older weights are stale
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "decode_steps": 0, "evicted_tokens": 0,
                      "batches": 0, "peak_kv_tokens": 0}

    def bind(self, model, processor) -> None:
        self.model, self.processor = model, processor
        self._generation += 1
        self._prefix.clear()
        self._cache_kwarg = None
        self.budget = None
        if self.kv_cache_gib is not None:
            per_token = kv_bytes_per_token(model.config, next(model.parameters()).dtype)
            self.budget = budget_tokens(self.kv_cache_gib, per_token)

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
        if self.kv_cache and self._supports_cache():
            return self._generate_admitted(trajs, max_new_tokens, stop_ids, greedy, on_finish)
        out: list[list[int]] = []
        for start in range(0, len(trajs), self.max_batch_size):
            rows = self._generate(trajs[start:start + self.max_batch_size], max_new_tokens, stop_ids, greedy)
            if on_finish is not None:
                for i, ids in enumerate(rows):
                    on_finish(start + i, ids)
            out.extend(rows)
        return out

    # ---- admission by KV-cache budget -------------------------------------------------------
    def _generate_admitted(self, trajs, max_new_tokens, stop_ids, greedy, on_finish) -> list[list[int]]:
        """Batches of consecutive rows admitted by the KV budget; the others wait for a later batch."""
        version = self._weights_version()
        out: list[list[int]] = [[] for _ in trajs]
        pending = list(range(len(trajs)))
        while pending:
            batch = self._admit(trajs, pending, max_new_tokens, version)
            pending = pending[len(batch):]
            done = None if on_finish is None else (lambda i, ids, b=batch: on_finish(b[i], ids))
            self.stats["batches"] += 1
            rows = self._generate_cached([trajs[i] for i in batch], max_new_tokens, stop_ids, greedy, done, version)
            for i, ids in zip(batch, rows):
                out[i] = ids
        return out

    def _admit(self, trajs, pending: list[int], max_new_tokens: int, version) -> list[int]:
        """The longest prefix of ``pending`` (at most ``max_batch_size`` rows) whose batch cache fits
        the budget, after evicting the kept caches of other trajectories (needed last first: they
        are re-prefilled when their turn comes)."""
        head = pending[: self.max_batch_size]
        if self.budget is None:
            return head
        rows: list[tuple[int, int]] = []
        for i in head:
            entry = self._lookup(trajs[i], version)
            c = len(entry.ids) if entry is not None else 0
            row = (c, len(trajs[i].input_ids) - c)
            if batch_footprint(rows + [row], max_new_tokens) > self.budget:
                break
            rows.append(row)
        if not rows:
            need = len(trajs[head[0]].input_ids) + max_new_tokens
            raise ValueError(f"rollout.engine.kv_cache_gib={self.kv_cache_gib} holds {self.budget} tokens of KV "
                             f"cache; one trajectory needs {need} (context + max_new_tokens): raise it")
        batch = head[: len(rows)]
        inside = {id(trajs[i]) for i in batch}
        waiting = set(pending)
        later = pending[len(batch):] + [j for j in range(len(trajs)) if j not in waiting]
        position = {id(trajs[i]): k for k, i in enumerate(later)}
        # soonest needed first: the rows waiting in this call, then those already served (next turn),
        # other trajectories' caches last (evicted first)
        kept = sorted(((key, len(e.ids)) for key, e in self._prefix.items() if key not in inside),
                      key=lambda kv: position.get(kv[0], len(position)))
        excess = batch_footprint(rows, max_new_tokens) + sum(n for _, n in kept) - self.budget
        for key in evictions(kept, excess):
            self.stats["evicted_tokens"] += len(self._prefix.pop(key).ids)
        return batch

    def _observe(self, cache) -> None:
        """Record the cache tokens held now (the batch's and the kept ones): ``stats['peak_kv_tokens']``."""
        layer = cache.layers[0] if cache.layers else None
        held = 0 if layer is None or layer.keys is None else layer.keys.shape[0] * layer.keys.shape[2]
        held += sum(len(e.ids) for e in self._prefix.values())
        self.stats["peak_kv_tokens"] = max(self.stats["peak_kv_tokens"], held)

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

    def _lookup(self, traj: Trajectory, version: int) -> Prefix | None:
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
                         greedy: bool, on_finish, version: int) -> list[list[int]]:
        model, tok = self.model, self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        # 1. what each row still has to encode; identical rows (a group's shared prompt) once
        entries = [self._lookup(t, version) for t in trajs]
        unique: dict[tuple, int] = {}
        row_of: list[int] = []
        todo: list[tuple[Trajectory, Prefix | None]] = []
        for t, e in zip(trajs, entries):
            done_images = e.images if e is not None else 0
            grid = t.encoded.grid_thw[done_images:]
            key = (id(e) if e is not None else None, tuple(t.input_ids[len(e.ids) if e else 0:]),
                   id(t.encoded.pixel_values) if grid.numel() else None, done_images)
            if key not in unique:
                unique[key] = len(todo)
                todo.append((t, e))
            row_of.append(unique[key])
        for t, e in todo:
            if e is not None:
                self._prefix.pop(id(t), None)  # the batch consumes it (its layers move into the batch cache)
        rows = [(len(e.ids) if e else 0, len(t.input_ids) - (len(e.ids) if e else 0)) for t, e in todo]
        self.stats["prefill_tokens"] += sum(s for _, s in rows)
        self.stats["reused_tokens"] += sum(c for c, _ in rows)
        # 2. batched prefill of the uncached suffixes, in groups of bounded size, then one batch
        was_training = model.training
        model.eval()
        try:
            groups = prefill_groups(rows, self.max_prefill_tokens)
            part = merge([prefill(model, [todo[i] for i in g], pad_id, self._forward) for g in groups])
            del todo, entries
            cache, logits, mask, pos_end = part.cache, part.logits, part.mask, part.pos_end
            index = torch.tensor(row_of, device=logits.device)
            if len(rows) != len(trajs) or row_of != list(range(len(rows))):  # expand shared rows to the batch
                cache.batch_select_indices(index)
                logits, mask, pos_end = logits[index], mask[index.cpu()], pos_end[index]
            return self._decode(trajs, cache, logits, mask.to(logits.device), pos_end, max_new_tokens, stop_ids,
                                greedy, on_finish, version, pad_id)
        finally:
            model.train(was_training)

    def _decode(self, trajs, cache, logits, mask, pos, max_new_tokens, stop_ids, greedy, on_finish, version,
                pad_id) -> list[list[int]]:
        device = logits.device
        banned = torch.tensor(suppressed_ids(self.processor.tokenizer), dtype=torch.long, device=device)
        stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
        do_sample = not (greedy or self.temperature == 0)
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
            nxt = self._pick(scores) if do_sample else scores.argmax(-1)
            toks = nxt.tolist()
            for b, t in enumerate(toks):
                gen[live[b]].append(t)
            finished = torch.isin(nxt, stops)
            if step == max_new_tokens - 1:
                finished[:] = True
            if bool(finished.any()):
                self._observe(cache)  # the batch is at its widest just before rows leave
                fin = finished.nonzero().flatten().tolist()
                keep = (~finished).nonzero().flatten()
                self._keep([(trajs[live[b]], b, int(pos[b]), gen[live[b]]) for b in fin], cache, mask, keep, version)
                if on_finish is not None:
                    for b in fin:
                        on_finish(live[b], gen[live[b]])
                if not len(keep):
                    break
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
        return sample(scores, self.temperature, self.top_k, self.top_p)

    def _keep(self, finished, cache, mask: torch.Tensor, keep: torch.Tensor, version) -> None:
        """Store the cache (pads removed) of each ``(traj, row, pos_end, new tokens)`` in ``finished``
        for the trajectory's next turn, and shrink the batch to the rows ``keep``; layer by layer, so
        the copies never hold more than one layer of the batch twice."""
        valid = [mask[b].bool() for _, b, _, _ in finished]
        layers: list[list] = [[] for _ in finished]
        for layer in cache.layers:
            for r, (_, b, _, _) in enumerate(finished):
                layers[r].append((layer.keys[b][:, valid[r]].clone(), layer.values[b][:, valid[r]].clone()))
            if len(keep):
                layer.keys, layer.values = layer.keys[keep], layer.values[keep]
            else:
                layer.keys = layer.values = None
        for (traj, _, pos_end, new), kept in zip(finished, layers):
            ids = traj.input_ids + new[:-1]  # the last token is not fed yet
            if kept and kept[0][0].shape[1] != len(ids):
                continue  # bookkeeping mismatch: recompute next turn rather than trust the cache
            self._prefix[id(traj)] = Prefix(ref=weakref.ref(traj), ids=ids, layers=kept, pos_end=pos_end,
                                            images=int(traj.encoded.grid_thw.shape[0]), weights=version)
