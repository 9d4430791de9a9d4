"""RL prompts in the verl layout (Metis-RL, DeepEyesV2 RL, the curation pipeline's kept sets).

``data=metis_rl``: rows with ``data_source``, ``prompt`` (list of {role, content}; the user text
holds one ``<image>`` per image), ``images`` (list of {bytes} or {path}), ``ability``,
``reward_model`` {ground_truth, style} and ``extra_info`` {answer, index, pass8, question, ...}
are read from a parquet file, a folder of parquet files or a hub dataset id. Records in this
project's trajectory schema (curation's ``kept.parquet``) are read by the same path: their first
user turn is the prompt.

Memory stays bounded: the start-up scan reads each row once with image headers only and keeps a
row index per usable prompt; a batch's images are decoded when the batch is drawn
(:class:`LazyTasks`). A row whose images do not match its placeholders (or have neither bytes nor
a path) is skipped at the scan; an image whose bytes do not decode is skipped when drawn, and the
next usable row of the same split takes its place. Both are counted by reason
(``RLPromptDataModule.skipped``, logged as ``data/skipped_rows``) with one log line per reason.

Each prompt gets its answer checker from ``verifiers`` (data_source or ability -> verifier, glob
patterns allowed); unmapped sources use ``default_verifier`` and are named once in a warning.

Deliberate simplifications: a hub id is downloaded whole (``huggingface_hub.snapshot_download``)
and every parquet file in it is read (the published sets have one split); the judge sees the
user text of the prompt (placeholders removed) as the question; ``data.system_prompt=row`` uses
the row's system message and falls back to the agent prompt for rows without one.
"""

from __future__ import annotations

import fnmatch
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Mapping

from metis.core.task import Task
from metis.data.prompts import PromptDataModule
from metis.data.rollout_records import task_from_record
from metis.data.samples import SampleSource
from metis.data.schema import parts_text

log = logging.getLogger(__name__)

HUB_ID = "Accio-Lab/Metis-RL"
SYSTEM_PROMPT_MODES = ("agent", "row")
KNOWN_VERIFIERS = ("math", "multiple_choice", "numeric", "exact", "judge")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def open_rows(source: str, image_root: str | None = None, max_rows: int | None = None):
    """The rows of ``source`` (parquet file / folder / hub id), scanned once, decoded lazily.

    The one place that reads the table: returns a :class:`metis.data.samples.SampleSource`
    (``len``, ``errors`` of the scan, ``load(i)`` -> a record with decoded images).
    """
    path = Path(str(source)).expanduser()
    if not path.exists():
        if path.suffix or str(source).startswith((".", "/", "~")) or not _HUB_ID_RE.match(str(source)):
            raise FileNotFoundError(f"data.source: {source} does not exist (a parquet file, a folder of parquet "
                                    f"files, or a hub dataset id such as {HUB_ID})")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(source), repo_type="dataset", allow_patterns=["*.parquet"]))
        except Exception as err:  # noqa: BLE001 - offline, unknown id, no access
            raise FileNotFoundError(f"data.source: cannot download hub dataset {source!r} "
                                    f"({type(err).__name__}: {str(err)[:200]}); pass a local copy") from None
    return SampleSource(path, image_root=image_root, layout="auto", limit=max_rows)


def route_verifier(data_source: str, ability: str | None, routes: Mapping[str, str], default: str) -> str | None:
    """The verifier for a row: ``routes[data_source]``, then ``routes[ability]`` (exact keys first,
    then glob patterns such as ``"*math*"``, case-insensitive); None when nothing matches (the
    caller uses ``default`` and warns)."""
    keys = [k for k in (data_source, ability) if k]
    for key in keys:
        if key in routes:
            return routes[key]
    for key in keys:
        for pattern, name in routes.items():
            if fnmatch.fnmatch(key.lower(), str(pattern).lower()):
                return name
    return None


def _prompt_text(record) -> tuple[str, str | None]:
    """(user text with ``<image>`` placeholders, system text or None) of a prompt record."""
    user = next((m for m in record.messages if m["role"] == "user"), None)
    system = next((m for m in record.messages if m["role"] == "system"), None)
    return (parts_text(user["content"]) if user else ""), (parts_text(system["content"]) if system else None)


class RLPromptRows:
    """A scanned prompt table: which rows are usable, their verifiers, and Task building."""

    def __init__(self, source: str, verifiers: Mapping[str, str] | None = None, default_verifier: str = "math",
                 system_prompt: str = "agent", image_root: str | None = None, max_rows: int | None = None) -> None:
        if system_prompt not in SYSTEM_PROMPT_MODES:
            raise ValueError(f"data.system_prompt must be one of {SYSTEM_PROMPT_MODES}, got {system_prompt!r}")
        routes = dict(verifiers or {})
        for key, name in [*routes.items(), ("default_verifier", default_verifier)]:
            if name not in KNOWN_VERIFIERS:
                raise ValueError(f"data.verifiers[{key}] / data.default_verifier: unknown verifier {name!r}; "
                                 f"known: {KNOWN_VERIFIERS}")
        self.routes, self.default_verifier, self.system_prompt = routes, default_verifier, system_prompt
        self.rows = open_rows(source, image_root, max_rows)
        self.skipped: Counter[str] = Counter()
        self._reported: set[str] = set()
        self._undecodable: set[int] = set()
        for kind, _ in self.rows.errors.values():  # the scan already logged one line naming each reason
            self.skipped[kind] += 1
            self._reported.add(kind)
        self.usable = [i for i in range(len(self.rows)) if i not in self.rows.errors]
        if not self.usable:
            raise ValueError(f"data.source={source}: no usable row among {len(self.rows)} "
                             f"(skipped by reason: {dict(self.skipped)})")
        self.checks: dict[str, dict[str, int]] = {}  # data_source -> {verifier: rows}
        self.sources: Counter[str] = Counter()
        self.unmapped: set[str] = set()
        self._survey()

    def _skip(self, kind: str, detail: str) -> None:
        self.skipped[kind] += 1
        if kind not in self._reported:  # one line per reason; the counts go to data/skipped_rows
            self._reported.add(kind)
            log.warning("RL data: skipping rows with %s (first: %s); counted in data/skipped_rows", kind, detail)

    def _column(self, name: str) -> list[Any]:
        table = self.rows.table
        if name not in self.rows.columns:
            return [None] * len(self.rows)
        if hasattr(table.rows, "column_names"):  # a ``datasets`` table: one column, no image bytes
            return list(table.rows[name])
        return [table[i].get(name) for i in range(len(table))]

    def _survey(self) -> None:
        """Route every source once (metadata columns only) and warn once about the unmapped ones."""
        sources = self._column("data_source") if "data_source" in self.rows.columns else self._column("source")
        abilities = self._column("ability")
        pairs: Counter[tuple[str, str | None]] = Counter()
        for i in self.usable:
            pairs[(str(sources[i] or "verl"), abilities[i])] += 1
        checks: dict[str, Counter[str]] = {}
        for (source, ability), n in sorted(pairs.items(), key=str):
            self.sources[source] += n
            name = route_verifier(source, ability, self.routes, self.default_verifier)
            if name is None:
                self.unmapped.add(source)
                name = self.default_verifier
            checks.setdefault(source, Counter())[name] += n
        if self.unmapped:
            log.warning("RL data: no data.verifiers entry for data_source %s; they use data.default_verifier=%s",
                        sorted(self.unmapped), self.default_verifier)
        self.checks = {s: dict(c) for s, c in checks.items()}
        log.info("RL data: %d usable prompts; answer checking per source: %s", len(self.usable), self.checks)

    def task(self, i: int) -> Task | None:
        """The prompt of row ``i`` with decoded images; None (counted) when its images do not decode."""
        if i in self._undecodable:
            return None
        sample = self.rows.load(i)
        if sample.error is not None:  # counted once, then passed over on later draws
            self._undecodable.add(i)
            self._skip(sample.error, f"row {i}: {sample.detail}")
            return None
        record = sample.record
        task = task_from_record(record)
        _, system = _prompt_text(record)
        meta = dict(record.meta)
        extra = meta.get("extra_info") or {}
        if isinstance(extra, Mapping) and extra.get("index") is not None:
            meta.setdefault("index", extra["index"])  # keys the offline image-search cache
        if self.system_prompt == "row" and system:
            meta["system_prompt"] = system
        task.meta = meta
        task.data_source = record.source or "verl"
        task.category = str(meta.get("category") or task.category)
        task.verifier = route_verifier(task.data_source, meta.get("ability"), self.routes,
                                       self.default_verifier) or self.default_verifier
        return task


class LazyTasks(Sequence):
    """A split of prompt rows; a row's images are decoded only when it is drawn."""

    def __init__(self, rows: RLPromptRows, indices: Sequence[int]) -> None:
        self.rows, self.indices = rows, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return LazyTasks(self.rows, self.indices[k])
        n = len(self.indices)
        if not -n <= k < n:
            raise IndexError(k)
        k %= n
        for step in range(n):  # a row that fails to decode is replaced by the next one of the split
            task = self.rows.task(self.indices[(k + step) % n])
            if task is not None:
                return task
        raise ValueError(f"no row of this split decodes (skipped by reason: {dict(self.rows.skipped)})")


class RLPromptDataModule(PromptDataModule):
    """``data=metis_rl``: the verl-layout RL prompts as a :class:`PromptDataModule`.

    Args:
        source: parquet file, folder of parquet files, or hub dataset id (``Accio-Lab/Metis-RL``).
        val_size: prompts held out (seeded) for validation; 0 disables validation.
        verifiers: data_source / ability (or a glob) -> verifier (math, multiple_choice, numeric,
            exact, judge). default_verifier: for sources not in the map (warned once).
        system_prompt: ``agent`` (the agent's prompt listing exactly the configured tools, as in
            SFT) or ``row`` (each row's own system message).
        max_rows: read only the first N rows (quick checks).
    """

    def __init__(self, source: str | None, processor=None, prompts_per_step: int = 2, val_size: int = 64,
                 val_prompts: int | None = None, seed: int = 0, verifiers: Mapping[str, str] | None = None,
                 default_verifier: str = "math", system_prompt: str = "agent", image_root: str | None = None,
                 max_rows: int | None = None) -> None:
        if not source:
            raise ValueError(f"data.source is not set: pass data.source=<parquet file, folder of parquet files, "
                             f"or hub id> (the published RL prompts are {HUB_ID})")
        if val_size < 0:
            raise ValueError(f"data.val_size must be >= 0, got {val_size}")
        super().__init__(source=self._splits, prompts_per_step=prompts_per_step, val_prompts=val_prompts,
                         seed=seed, num_workers=0, processor=processor)
        self.path, self.val_size = str(source), int(val_size)
        self.options = {"verifiers": dict(verifiers or {}), "default_verifier": default_verifier,
                        "system_prompt": system_prompt, "image_root": image_root, "max_rows": max_rows}
        self.rows: RLPromptRows | None = None

    def _splits(self) -> dict[str, LazyTasks]:
        self.rows = RLPromptRows(self.path, **self.options)
        order = list(self.rows.usable)
        random.Random(self.seed).shuffle(order)
        n_val = min(self.val_size, max(len(order) - 1, 0))
        val, train = sorted(order[:n_val]), sorted(order[n_val:])
        log.info("RL data: %d train / %d val prompts from %s", len(train), len(val), self.path)
        return {"train": LazyTasks(self.rows, train), "val": LazyTasks(self.rows, val)}

    @property
    def skipped(self) -> dict[str, int]:
        """Skipped rows by reason (scan and draw)."""
        return dict(self.rows.skipped) if self.rows is not None else {}

    def metrics(self) -> dict[str, float]:
        """``data/skipped_rows`` and one count per reason, for the step's log."""
        skipped = self.skipped
        return {"data/skipped_rows": float(sum(skipped.values())),
                **{f"data/skipped/{k}": float(v) for k, v in skipped.items()}}


__all__ = ["RLPromptDataModule", "RLPromptRows", "LazyTasks", "open_rows", "route_verifier", "HUB_ID"]
