"""The SFT LightningDataModule: trajectories in, padded token batches with assistant-only labels out.

Encoding: the processor's chat template renders the record (``tool`` turns as user turns);
``return_assistant_tokens_mask`` of the tokenizer marks the ``{% generation %}`` spans (assistant
content and its ``<|im_end|>``); every other token (system, user, tool observations, image
placeholders, padding) gets label -100. Each ``<|image_pad|>`` is then expanded to the image's
token count (``grid_thw.prod() / merge_size**2``), exactly as the processor expands it, and
``mm_token_type_ids`` is 1 on those tokens (Qwen3-VL needs it for M-RoPE).

Batching is length aware: indices are shuffled, cut into mega-batches, sorted by length inside
each, then cut into fixed-size batches (``batch_size``) or token-budget batches (``batch_tokens``:
rows x longest row <= budget); batch order is shuffled, the longest batch goes first (an OOM shows
at step 1).

Rows are read through :mod:`metis.io.tables`: every row that cannot be read, converted, validated
(:meth:`TrajectoryRecord.validate`: unbalanced tags, a tool call left in reasoning, no final answer,
...) or fitted in ``max_length`` is skipped, counted by reason in ``datamodule.skipped``, listed in
``skipped_rows_file`` and reported in one warning; the run stops at start-up only when the skipped
fraction exceeds ``max_skipped_fraction`` (or no row is usable).

Deliberate simplifications: no sequence packing (Qwen3-VL's M-RoPE positions and sdpa attention
would need per-sample position/attention handling; length grouping recovers most of the padding
waste); over-length rows are dropped, not truncated; the length scan reads image headers only, so
an image whose bytes break after the header is caught at batch time (skipped, counted in the
main process only when ``num_workers=0``).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from hydra.utils import get_class
from torch.utils.data import DataLoader, Dataset, Sampler

from metis.core.format import build_system_prompt
from metis.data.schema import BadRecord, TrajectoryRecord, load_records
from metis.io.tables import SkippedRows, read_rows
from metis.tools import ImageSearchTool, PythonTool, TextSearchTool

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
             "<|video_pad|>", "<|endoftext|>")


def chat_messages(record: TrajectoryRecord, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Template-ready messages; control tokens inside texts are defused, as the agent does."""
    out = []
    for m in record.messages:
        if m["role"] == "system" and system_prompt is not None:
            continue
        parts = []
        for p in m["content"]:
            if p["type"] == "image":
                parts.append({"type": "image"})
            else:
                text = p.get("text") or ""
                for s in _SPECIALS:
                    text = text.replace(s, s.replace("<|", "<\\|"))
                parts.append({"type": "text", "text": text})
        out.append({"role": m["role"], "content": parts})
    if system_prompt is not None:
        out.insert(0, {"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    return out


def _template_ids(messages: list[dict[str, Any]], tokenizer) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if sum(mask) == 0:
        raise BadRecord("no_assistant_turn", "no assistant token to learn")
    return ids, mask


def image_token_counts(images: Sequence[Any], image_processor) -> list[int]:
    """Tokens each image takes after merging (from its size only; no pixels processed)."""
    merge = int(getattr(image_processor, "merge_size", 2))
    if not hasattr(image_processor, "get_number_of_image_patches"):  # fall back to processing pixels
        grid = torch.as_tensor(image_processor(images=[im.convert("RGB") for im in images])["image_grid_thw"])
        return (grid.prod(-1) // merge ** 2).tolist()
    return [int(image_processor.get_number_of_image_patches(im.height, im.width, {})) // merge ** 2 for im in images]


def encode_record(record: TrajectoryRecord, processor, system_prompt: str | None = None) -> dict[str, torch.Tensor]:
    """``input_ids``, ``labels``, ``mm_token_type_ids`` (1-D) and the images' ``pixel_values`` /
    ``image_grid_thw`` of one record."""
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    ids, mask = _template_ids(chat_messages(record, system_prompt), tok)
    images = [im.convert("RGB") for im in record.images]
    if ids.count(image_id) != len(images):
        raise BadRecord("image_mismatch", f"{ids.count(image_id)} image slots for {len(images)} images")
    out: dict[str, torch.Tensor] = {}
    counts: list[int] = []
    if images:
        enc = processor.image_processor(images=images, return_tensors="pt")
        grid = torch.as_tensor(enc["image_grid_thw"])
        merge = int(processor.image_processor.merge_size)
        counts = (grid.prod(-1) // merge ** 2).tolist()
        out["pixel_values"] = torch.as_tensor(enc["pixel_values"])
        out["image_grid_thw"] = grid
    full_ids: list[int] = []
    labels: list[int] = []
    k = 0
    for t, m in zip(ids, mask):
        if t == image_id:
            full_ids.extend([image_id] * counts[k])
            labels.extend([IGNORE_INDEX] * counts[k])
            k += 1
        else:
            full_ids.append(t)
            labels.append(t if m else IGNORE_INDEX)
    input_ids = torch.tensor(full_ids, dtype=torch.long)
    out.update(input_ids=input_ids, labels=torch.tensor(labels, dtype=torch.long),
               mm_token_type_ids=(input_ids == image_id).long())
    return out


def record_length(record: TrajectoryRecord, processor, system_prompt: str | None = None) -> int:
    """Token length of the encoded record without processing any pixels."""
    ids, _ = _template_ids(chat_messages(record, system_prompt), processor.tokenizer)
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    if ids.count(image_id) != len(record.images):
        raise BadRecord("image_mismatch", f"{ids.count(image_id)} image slots for {len(record.images)} images")
    return len(ids) - len(record.images) + sum(image_token_counts(record.images, processor.image_processor))


class SFTDataset(Dataset):
    """Encodes records on access; a row that fails at this point yields ``None`` (dropped by collate)."""

    def __init__(self, records: Sequence[TrajectoryRecord], indices: Sequence[int], lengths: Sequence[int],
                 processor, system_prompt: str | None = None) -> None:
        self.records, self.indices, self.lengths = records, list(indices), list(lengths)
        self.processor, self.system_prompt = processor, system_prompt
        self.runtime_skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor] | None:
        try:
            return encode_record(self.records[self.indices[i]], self.processor, self.system_prompt)
        except Exception as err:  # noqa: BLE001 - a bad row must never stop a training run
            kind = err.kind if isinstance(err, BadRecord) else "corrupt_image" if isinstance(err, OSError) else "encode_error"
            self.runtime_skipped[kind] += 1
            log.warning("skipping SFT row %d at batch time (%s): %s", self.indices[i], kind, str(err)[:200])
            return None


def collate_sft(batch: list[dict[str, torch.Tensor] | None], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; images concatenated in row order."""
    rows = [b for b in batch if b is not None]
    if not rows:
        return {}
    width = max(len(r["input_ids"]) for r in rows)
    out = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
        "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        "mm_token_type_ids": torch.zeros(len(rows), width, dtype=torch.long),
    }
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = r["input_ids"]
        out["attention_mask"][i, :n] = 1
        out["labels"][i, :n] = r["labels"]
        out["mm_token_type_ids"][i, :n] = r["mm_token_type_ids"]
    with_images = [r for r in rows if "pixel_values" in r]
    if with_images:
        out["pixel_values"] = torch.cat([r["pixel_values"] for r in with_images])
        out["image_grid_thw"] = torch.cat([r["image_grid_thw"] for r in with_images])
    return out


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset positions, grouped by length (see the module docstring).

    ``length_grouping=False`` gives plain random batches (the baseline). With ``num_replicas`` > 1
    each rank takes every ``num_replicas``-th batch; the batch count is equalised across ranks.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int | None = None, batch_tokens: int | None = None,
                 length_grouping: bool = True, mega_batch_rows: int = 256, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0) -> None:
        if (batch_size is None) == (batch_tokens is None):
            raise ValueError("set exactly one of data.batch_size and data.batch_tokens")
        if (batch_size is not None and batch_size < 1) or (batch_tokens is not None and batch_tokens < 1):
            raise ValueError("data.batch_size / data.batch_tokens must be >= 1")
        self.lengths, self.batch_size, self.batch_tokens = list(lengths), batch_size, batch_tokens
        self.length_grouping, self.mega_batch_rows, self.shuffle = length_grouping, max(1, mega_batch_rows), shuffle
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _cut(self, order: list[int]) -> list[list[int]]:
        if self.batch_size is not None:
            return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches, cur, longest = [], [], 0
        for i in order:
            new_longest = max(longest, self.lengths[i])
            if cur and new_longest * (len(cur) + 1) > self.batch_tokens:
                batches.append(cur)
                cur, new_longest = [], self.lengths[i]
            cur.append(i)
            longest = new_longest
        if cur:
            batches.append(cur)
        return batches

    def batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        if self.length_grouping:
            batches = []
            for s in range(0, len(order), self.mega_batch_rows):
                mega = sorted(order[s:s + self.mega_batch_rows], key=lambda i: -self.lengths[i])
                batches.extend(self._cut(mega))
            if self.shuffle:
                rng.shuffle(batches)
            if batches:
                top = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
                batches.insert(0, batches.pop(top))
        else:
            batches = self._cut(order)
        if self.num_replicas > 1:
            usable = len(batches) // self.num_replicas * self.num_replicas
            batches = batches[:usable][self.rank::self.num_replicas]
        self._cache = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def resolve_source(source: Any, split: str = "train", image_root: str | None = None,
                   layout: str = "auto") -> Sequence[TrajectoryRecord]:
    """A sequence of records from a path / hub id, a callable returning records, or a sequence."""
    if isinstance(source, str):
        return load_records(source, split=split, image_root=image_root, layout=layout, full_decode=False)
    if callable(source):
        return source()
    return source


class SFTDataModule(L.LightningDataModule):
    """Serves SFT batches from any record source.

    Args:
        source: a local path / hub id (:func:`metis.data.schema.load_records`), a callable returning
            records (Hydra ``_partial_``), or a sequence of records.
        max_length: rows longer than this (in tokens, images included) are skipped.
        batch_size / batch_tokens: rows per batch, or a padded-token budget per batch (one of them).
        length_grouping: sort by length inside shuffled mega-batches of ``mega_batch_rows`` rows.
        val_fraction: a seeded share of the usable rows held out for ``val/loss``.
        system_prompt: ``None`` keeps each record's system message; a string replaces it; ``"metis"``
            uses the agent prompt listing ``tools`` (what the agent loop shows at RL time with those tools).
        image_root: folder relative image paths resolve against (default: the data file's folder).
        max_skipped_fraction: the run stops at start-up when more rows than this are unusable.
        skipped_rows_file: JSONL listing every skipped row and its reason (written by rank 0);
            ``"auto"``: ``skipped_rows.jsonl`` in the Hydra run's output dir (none outside a Hydra run).
        tools: tool names for ``system_prompt="metis"``; match the RL run's ``tools`` config.
    """

    def __init__(self, source: Any, processor, max_length: int = 4096, batch_size: int | None = None,
                 batch_tokens: int | None = None, length_grouping: bool = True, mega_batch_rows: int = 256,
                 val_fraction: float = 0.05, seed: int = 0, num_workers: int = 0, split: str = "train",
                 image_root: str | None = None, layout: str = "auto", system_prompt: str | None = None,
                 max_rows: int | None = None, val_batch_size: int | None = None,
                 max_skipped_fraction: float = 0.1, skipped_rows_file: str | None = None,
                 tools: Sequence[str] = ("python",)) -> None:
        super().__init__()
        if batch_size is not None and batch_tokens is not None:
            raise ValueError(f"data.batch_size={batch_size} and data.batch_tokens={batch_tokens} are both set; "
                             "set the one you want and the other to null")
        if batch_size is None and batch_tokens is None:
            batch_size = 8
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.source, self.processor, self.max_length = source, processor, max_length
        self.batch_size, self.batch_tokens, self.length_grouping = batch_size, batch_tokens, length_grouping
        self.mega_batch_rows, self.val_fraction, self.seed = mega_batch_rows, val_fraction, seed
        self.num_workers, self.split, self.image_root, self.layout = num_workers, split, image_root, layout
        self.system_prompt = _system_prompt(system_prompt, list(tools))
        self.max_rows, self.val_batch_size = max_rows, val_batch_size
        self.max_skipped_fraction, self.skipped_rows_file = max_skipped_fraction, skipped_rows_file
        self.scan_skipped: Counter[str] = Counter()
        self.train_set: SFTDataset | None = None
        self.val_set: SFTDataset | None = None
        self.pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped rows by reason: the start-up scan plus rows that failed at batch time."""
        total = Counter(self.scan_skipped)
        for ds in (self.train_set, self.val_set):
            if ds is not None:
                total.update(ds.runtime_skipped)
        return dict(total)

    def scan(self, records: Sequence[TrajectoryRecord]) -> tuple[list[int], list[int]]:
        """Usable row indices and their token lengths; every other row is counted by reason."""
        n = len(records) if self.max_rows is None else min(len(records), self.max_rows)
        skips = SkippedRows("SFT data", self.max_skipped_fraction, bound_key="data.max_skipped_fraction",
                            file=_skipped_rows_file(self.skipped_rows_file) if self._ranks()[1] == 0 else None)

        def length(rec: TrajectoryRecord) -> int:
            rec.validate()
            tokens = record_length(rec, self.processor, self.system_prompt)
            if tokens > self.max_length:
                raise BadRecord("over_length", f"{tokens} tokens > data.max_length={self.max_length}")
            return tokens

        usable = list(read_rows(records, length, skips, range(n)))
        self.scan_skipped = Counter(skips.counts)
        skips.finish(n)  # raises past data.max_skipped_fraction
        if not usable:
            raise ValueError(f"no usable SFT row among {n} (skipped by reason: {dict(skips.counts)})")
        return [i for i, _ in usable], [t for _, t in usable]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        records = resolve_source(self.source, self.split, self.image_root, self.layout)
        keep, lengths = self.scan(records)
        order = list(range(len(keep)))
        random.Random(self.seed).shuffle(order)
        n_val = int(round(len(keep) * self.val_fraction)) if len(keep) > 1 else 0
        val_pos, train_pos = sorted(order[:n_val]), sorted(order[n_val:])
        self.train_set = SFTDataset(records, [keep[p] for p in train_pos], [lengths[p] for p in train_pos],
                                    self.processor, self.system_prompt)
        self.val_set = SFTDataset(records, [keep[p] for p in val_pos], [lengths[p] for p in val_pos],
                                  self.processor, self.system_prompt) if val_pos else None
        log.info("SFT data: %d train / %d val rows, %d train tokens", len(train_pos), len(val_pos),
                 sum(self.train_set.lengths))

    def _ranks(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, ds: SFTDataset, shuffle: bool, batch_size: int | None) -> DataLoader:
        world, rank = self._ranks()
        sampler = LengthGroupedBatchSampler(
            ds.lengths, batch_size=batch_size if self.batch_tokens is None else None,
            batch_tokens=self.batch_tokens, length_grouping=self.length_grouping,
            mega_batch_rows=self.mega_batch_rows, shuffle=shuffle, seed=self.seed, num_replicas=world, rank=rank)
        return DataLoader(ds, batch_sampler=sampler, num_workers=self.num_workers,
                          collate_fn=_Collate(self.pad_id), persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []
        return self._loader(self.val_set, False, self.val_batch_size or self.batch_size)


class _Collate:
    """Picklable collate (DataLoader workers)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch):
        return collate_sft(batch, self.pad_id)


def _skipped_rows_file(value: str | None) -> str | None:
    if value != "auto":
        return value
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    # outside a Hydra run (or with a Hydra config set by hand, without runtime values) there is no run dir
    out = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None, throw_on_missing=False) \
        if HydraConfig.initialized() else None
    return f"{out}/skipped_rows.jsonl" if out else None


def agent_system_prompt(tools: Sequence[str]) -> str:
    """The agent's system prompt listing exactly ``tools``, as the RL rollout loop builds it from its
    configured toolbox: SFT and RL prompts agree when the tool lists do. A name is a built-in tool's
    (``python``, ``text_search``, ``image_search``) or a tool class's ``_target_`` path."""
    builtin = {c.name: c for c in (PythonTool, TextSearchTool, ImageSearchTool)}
    return build_system_prompt([(builtin[n] if n in builtin else get_class(n)).spec() for n in tools])


def _system_prompt(value: str | None, tools: Sequence[str]) -> str | None:
    return agent_system_prompt(tools) if value == "metis" else value


__all__ = ["SFTDataModule", "SFTDataset", "LengthGroupedBatchSampler", "encode_record", "record_length",
           "collate_sft", "chat_messages", "image_token_counts", "IGNORE_INDEX"]
