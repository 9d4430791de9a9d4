"""Answer checking of a step's rollouts: deterministic verifiers and the LLM judge.

Each rollout is checked by the verifier its task names (``Task.verifier``; ``data=metis_rl`` sets
it per data_source): ``math``, ``multiple_choice``, ``numeric``, ``exact`` from
:mod:`metis.rl.verifiers`, or ``judge``, the OpenAI-compatible LLM judge
(:class:`metis.io.judge.LLMJudge`, CORRECT/INCORRECT, max over the ground truths).

The judge calls of a step run concurrently in a bounded thread pool, one call per distinct
(question, ground truth, answer) of the step; the judge's own cache (memory and disk) answers
repeats across steps. A check whose retries are spent leaves its rollouts **unscored**, never
wrong: they get no advantage (:meth:`Scorer.update_indices` leaves them out of the step's update,
and a group with too few scored members contributes nothing; :func:`scheme_over_kept` computes
the scheme over the rest) and are counted; when more than
``max_unscored_frac`` of a step is unscored, :meth:`Scorer.check_unscored` stops the run with an
error naming the endpoint. The judge is probed at construction, so a run with an unreachable or
misconfigured endpoint fails at start.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from metis.io.chat_client import JudgeUnavailable
from metis.rl.rewards import format_reward
from metis.rl.types import AdvantageChannel, AdvantageResult, RolloutScores
from metis.rl.verifiers import VERIFIERS

log = logging.getLogger(__name__)


class UnscoredStepError(RuntimeError):
    """Too many rollouts of a step could not be scored (the judge endpoint is failing)."""


@dataclass
class ScoredBatch:
    """The scores of a step's rollouts; ``scored[i]`` is False where the check failed (its
    ``r_ans`` is a placeholder 0 that must not be trained on)."""

    scores: RolloutScores
    scored: list[bool]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def num_unscored(self) -> int:
        return sum(not s for s in self.scored)


def judge_question(question: str) -> str:
    """The question shown to the judge: the prompt text without image placeholders."""
    return " ".join(question.replace("<image>", " ").split())


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]


class Scorer:
    """Scores rollouts per ``Task.verifier``; the judge (optional) checks ``verifier == "judge"``.

    Args:
        judge: an :class:`metis.io.judge.LLMJudge` (Hydra-built), or None when no task uses it.
        judge_workers: concurrent judge requests of one step.
        max_unscored_frac: the run stops when a step leaves more than this share unscored.
        min_scored_per_group: a group with unscored members keeps its scored ones only when at
            least this many remain (GRPO needs two to compare).
        probe: check the judge endpoint at construction (fail fast).
    """

    def __init__(self, judge: Any = None, judge_workers: int = 16, max_unscored_frac: float = 0.1,
                 min_scored_per_group: int = 2, probe: bool = True) -> None:
        if judge_workers < 1:
            raise ValueError(f"scoring.judge_workers must be >= 1, got {judge_workers}")
        if not 0.0 <= max_unscored_frac <= 1.0:
            raise ValueError(f"scoring.max_unscored_frac must be in [0, 1], got {max_unscored_frac}")
        self.judge, self.judge_workers = judge, int(judge_workers)
        self.max_unscored_frac, self.min_scored_per_group = float(max_unscored_frac), int(min_scored_per_group)
        if judge is not None and probe:
            judge.probe()
            log.info("answer judge: %s (model %s) answers", judge.url, judge.model)

    @property
    def endpoint(self) -> str:
        return f"{self.judge.url} (model {self.judge.model!r})" if self.judge is not None else "no judge"

    def _judge_one(self, question: str, truth: str | list[str], answer: str) -> tuple[float | None, float, str]:
        t0 = time.perf_counter()
        try:
            return float(self.judge.judge(question, truth, answer)), time.perf_counter() - t0, ""
        except JudgeUnavailable as err:
            return None, time.perf_counter() - t0, str(err)

    def score(self, trajs: Sequence[Any]) -> ScoredBatch:
        r_ans: list[float | None] = [None] * len(trajs)
        jobs: dict[tuple[str, str, str], list[int]] = {}
        for i, t in enumerate(trajs):
            name = t.task.verifier
            if name != "judge":
                r_ans[i] = float(VERIFIERS.get(name)(t.final_answer, t.task.answer))
                continue
            if self.judge is None:
                raise ValueError(f"task {t.task.id} (data_source {t.task.data_source!r}) is checked by the judge but "
                                 f"scoring.judge is not configured: set scoring=judge and scoring.judge.base_url")
            if t.final_answer is None or not t.final_answer.strip():
                r_ans[i] = 0.0  # no answer is wrong without asking anyone
                continue
            key = (judge_question(t.task.question), json.dumps(t.task.answer), t.final_answer.strip())
            jobs.setdefault(key, []).append(i)
        metrics: dict[str, float] = {}
        if jobs:
            hits0 = self.judge.cache_hits
            with ThreadPoolExecutor(max_workers=min(self.judge_workers, len(jobs))) as pool:
                futures = {key: pool.submit(self._judge_one, key[0], json.loads(key[1]), key[2]) for key in jobs}
            failures, latencies, first_error = 0, [], ""
            for key, fut in futures.items():
                verdict, latency, error = fut.result()
                latencies.append(latency)
                if verdict is None:
                    failures += 1
                    first_error = first_error or error
                for i in jobs[key]:
                    r_ans[i] = verdict
            if failures:
                log.warning("judge: %d of %d checks failed after retries (rollouts left unscored): %s",
                            failures, len(jobs), first_error)
            metrics = {"reward/judge_calls": float(len(jobs)), "reward/judge_failures": float(failures),
                       "reward/judge_latency_p95": _p95(latencies),
                       "reward/judge_cache_hits": float(self.judge.cache_hits - hits0)}
        scored = [r is not None for r in r_ans]
        metrics["reward/unscored"] = float(sum(not s for s in scored))
        scores = RolloutScores(
            r_ans=torch.tensor([r if r is not None else 0.0 for r in r_ans], dtype=torch.float32),
            r_fmt=torch.tensor([format_reward(t.response_text) for t in trajs], dtype=torch.float32),
            num_tool_calls=torch.tensor([t.num_tool_calls for t in trajs], dtype=torch.long),
            group_ids=torch.tensor([t.group_id for t in trajs], dtype=torch.long),
        )
        return ScoredBatch(scores=scores, scored=scored, metrics=metrics)

    def check_unscored(self, batch: ScoredBatch) -> None:
        """Stop the run when a step left too many rollouts unscored (call after saving them)."""
        n = len(batch.scored)
        if n and batch.num_unscored / n > self.max_unscored_frac:
            raise UnscoredStepError(
                f"{batch.num_unscored} of {n} rollouts of this step could not be scored "
                f"(> scoring.max_unscored_frac={self.max_unscored_frac}): the answer judge at {self.endpoint} is failing")

    def update_indices(self, batch: ScoredBatch) -> list[int]:
        """Rollouts that take part in the update: every scored rollout of a fully scored group, and the
        scored ones of a partly scored group that keeps at least ``min_scored_per_group``."""
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(batch.scores.group_ids.tolist()):
            groups.setdefault(g, []).append(i)
        keep: list[int] = []
        for members in groups.values():
            scored = [i for i in members if batch.scored[i]]
            if len(scored) == len(members) or len(scored) >= self.min_scored_per_group:
                keep.extend(scored)
        return sorted(keep)


def subset_scores(scores: RolloutScores, idx: Sequence[int]) -> RolloutScores:
    rows = torch.tensor(list(idx), dtype=torch.long)
    return RolloutScores(r_ans=scores.r_ans[rows], r_fmt=scores.r_fmt[rows],
                         num_tool_calls=scores.num_tool_calls[rows], group_ids=scores.group_ids[rows])


def scheme_over_kept(scheme: Any, batch: ScoredBatch, keep: Sequence[int]) -> tuple[AdvantageResult, AdvantageResult | None]:
    """The scheme's advantages computed over the rollouts in ``keep`` only, spread back to every
    rollout of the step with zeros elsewhere (full result, result over ``keep`` or None)."""
    n = len(batch.scored)
    if len(keep) == n:
        result = scheme.compute(batch.scores)
        return result, result
    if not keep:  # nothing trains this step: zero advantages with the scheme's channels
        shape = scheme.compute(batch.scores)
        zero = [AdvantageChannel(c.name, torch.zeros(n), c.weight, c.nonzero_only) for c in shape.channels]
        return AdvantageResult(channels=zero, metrics={}), None
    kept = scheme.compute(subset_scores(batch.scores, keep))
    rows = torch.tensor(list(keep), dtype=torch.long)

    def spread(values: torch.Tensor) -> torch.Tensor:
        full = torch.zeros(n, dtype=torch.float32)
        full[rows] = values.float()
        return full

    channels = [AdvantageChannel(c.name, spread(c.advantages), c.weight, c.nonzero_only) for c in kept.channels]
    return AdvantageResult(channels=channels, rewards={k: spread(v) for k, v in kept.rewards.items()},
                           metrics=dict(kept.metrics)), kept


__all__ = ["Scorer", "ScoredBatch", "UnscoredStepError", "judge_question", "scheme_over_kept", "subset_scores"]
