"""The loop every curation stage runs in: batches, progress, resume, seeds, kept set, report.

A stage (:class:`Stage`) only decides, for a batch of valid samples, one result row per sample:
``{"id", "status": "kept" | "dropped" | "error", "reason", "details"}``. :func:`run_stage` does the
rest:

* the input is cut into fixed batches of ``batch_size`` rows (by input position, so a batch is the
  same batch in every run); batch ``b`` is seeded with ``derive_seed(seed, stage, b)``;
* rows already ``kept``/``dropped`` in ``results.jsonl`` are not redone; a stage with
  ``atomic_batches`` (the model stages: sampled rollouts depend on the batch they share) redoes a
  whole batch when any of its rows is missing and writes only the missing rows, which are then
  exactly what an uninterrupted run wrote;
* bad input rows become ``bad_input`` rows; ``error`` rows (e.g. one unparseable judge reply) and
  bad input are retried by every rerun;
* a stage that cannot go on (judge unreachable, sandbox broken; in :meth:`Stage.open` or in a
  batch) raises :class:`StageAborted`: the rows finished so far are appended, the report says
  "incomplete", nothing is deleted;
* on completion the kept records (annotated by the stage, in input order) are written atomically
  to ``kept.parquet`` and the report to ``report.md`` / ``report.json`` (and the logger).

Deliberate simplifications: batches run one after the other (parallelism lives inside a stage);
the kept set is rewritten whole at the end of each completed run.
"""

from __future__ import annotations

import hashlib
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

from metis.curation.io import FINAL_STATUSES, ResultLog, write_records_atomic
from metis.data.samples import Sample, SampleSource
from metis.data.schema import TrajectoryRecord

log = logging.getLogger("metis.curation")


class StageAborted(RuntimeError):
    """The stage cannot continue; ``rows`` are the results finished before it stopped."""

    def __init__(self, message: str, rows: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.rows = list(rows or [])


class Stage:
    """One curation step. Subclasses set ``name`` and implement :meth:`process`."""

    name: str = "stage"
    atomic_batches: bool = False
    # True: the input must be SFT trajectories (an RL prompt table is refused, records validated)
    input_trajectories: bool = True
    # reasons for removal, with one line each for the report
    reasons: dict[str, str] = {}

    def open(self) -> None:
        """Acquire models, tools or clients (called once, only when some batch has work)."""

    def process(self, samples: list[Sample]) -> list[dict[str, Any]]:
        """One row per (valid) sample, in order. May raise :class:`StageAborted`."""
        raise NotImplementedError

    def annotate(self, record: TrajectoryRecord, row: dict[str, Any]) -> TrajectoryRecord:
        """The kept record with this stage's details stored under ``meta["curation"][name]``."""
        curation = dict(record.meta.get("curation") or {})
        curation[self.name] = row.get("details") or {}
        record.meta = {**record.meta, "curation": curation}
        return record

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Extra report numbers and markdown sections: ``{"metrics": {...}, "sections": {title: md}}``."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The stage's settings for the report."""
        return {}

    def close(self) -> None:
        """Release what :meth:`open` acquired."""


def derive_seed(seed: int, stage: str, batch: int) -> int:
    return int(hashlib.sha256(f"{seed}/{stage}/{batch}".encode()).hexdigest()[:8], 16)


def seed_all(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    torch = sys.modules.get("torch")  # only when a model stage imported it
    if torch is not None:
        torch.manual_seed(seed)


def bad_input_row(sample: Sample) -> dict[str, Any]:
    return {"id": sample.id, "status": "bad_input", "reason": sample.error,
            "details": {"row": sample.index, "detail": sample.detail}}


def run_stage(stage: Stage, source: SampleSource, out_dir: str | Path, *, batch_size: int = 16, seed: int = 0,
              resume: bool = True, progress: bool = True, logger: Any = None, examples_per_reason: int = 3,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``stage`` over ``source``; returns the report dict (also written under ``out_dir``)."""
    from metis.curation.report import build_report, log_report, write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = ResultLog(out / "results.jsonl")
    if not resume and (bak := results.set_aside()) is not None:
        log.warning("resume=false: the earlier results were moved to %s", bak)
    previous = results.read()
    done = {i for i, r in previous.items() if r.get("status") in FINAL_STATUSES}
    n = len(source)
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, max(1, batch_size))]
    t0 = time.monotonic()
    stats = {"reused": sum(1 for i in source.ids if i in done), "processed": 0, "batches_run": 0,
             "torn_lines": results.torn_lines}
    opened, aborted = False, None
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, initial=stats["reused"], desc=f"curate/{stage.name}", unit="sample", disable=not progress,
                   dynamic_ncols=True)
        for b, idx in enumerate(batches):
            todo = [i for i in idx if source.ids[i] not in done]
            if not todo:
                continue
            run_idx = idx if stage.atomic_batches else todo
            samples = [source.load(i) for i in run_idx]
            rows = [bad_input_row(s) for s in samples if s.error is not None and s.index in todo]
            valid = [s for s in samples if s.error is None]
            if valid:
                try:
                    if not opened:
                        opened = True  # close() also releases what a failed open() acquired
                        stage.open()
                    seed_all(derive_seed(seed, stage.name, b))
                    out_rows = stage.process(valid)
                except StageAborted as err:
                    aborted = err
                    out_rows = err.rows
                if not aborted and len(out_rows) != len(valid):
                    raise RuntimeError(f"stage {stage.name} returned {len(out_rows)} rows for {len(valid)} samples")
                wanted = {source.ids[i] for i in todo}
                rows += [r for r in out_rows if r["id"] in wanted]
            results.append(rows)
            stats["batches_run"] += 1
            stats["processed"] += len(rows)
            bar.update(len(rows))
            if aborted:
                break
        bar.close()
    finally:
        if opened:
            stage.close()
    final = results.read()
    rows = [final[i] for i in source.ids if i in final]
    status = "complete"
    if aborted is not None:
        status = "incomplete"
    elif any(r["status"] == "error" for r in rows):
        status = "complete_with_errors"
    report = build_report(stage, source, rows, status=status, stats={**stats, "elapsed_s": time.monotonic() - t0},
                          message=str(aborted) if aborted else None, examples_per_reason=examples_per_reason,
                          extra=extra)
    if aborted is None:
        kept = []
        for i, rid in enumerate(source.ids):
            row = final.get(rid)
            if row is not None and row["status"] == "kept":
                sample = source.load(i)
                if sample.record is not None:
                    kept.append(stage.annotate(sample.record, row))
        report["output"] = str(write_records_atomic(kept, out / "kept.parquet"))
    write_report(report, out)
    log_report(logger, report)
    if aborted is not None:
        raise StageAborted(f"{aborted} -- {report['counts']['finished']} of {report['counts']['in']} samples are "
                           f"finished and kept in {results.path}; rerun the same command to resume", aborted.rows)
    return report
