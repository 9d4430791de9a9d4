"""The evaluation's LLM judge: built from ``judge`` in conf/evaluate.yaml, probed at start-up,
guarded against a dead endpoint, and able to send a benchmark's own grading prompt.

- :func:`build_judge`: an :class:`metis.io.judge.LLMJudge` (generic CORRECT/INCORRECT prompt)
  wrapped in :class:`GradingJudge`, plus the run settings (``required``, ``probe``,
  ``probe_timeout_s``, ``max_failures``); an endpoint failing the probe is an EvalError.
- :class:`GradingJudge` adds ``grade(prompt)``: a complete grading prompt written by the benchmark
  (CharXiv's ``grading_query``), whose reply is JSON with a 0/1 ``score`` (CharXiv's format) or
  CORRECT/INCORRECT; cached on disk like every verdict.
- :class:`GuardedJudge`: after ``max_failures`` consecutive ``JudgeUnavailable`` the judge is
  taken as down and later calls fail at once, so a dead endpoint costs a few timeouts, not one per row.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import hydra

from metis.eval.formats import EvalError
from metis.io.chat_client import ChatClient
from metis.io.judge import JudgeUnavailable, parse_verdict

log = logging.getLogger("metis.eval")
JUDGE_RUN_KEYS = {"required": True, "probe": True, "probe_timeout_s": 10.0, "max_failures": 3}
_CLIENT_KEYS = ("api_key_env", "temperature", "timeout_s", "max_retries", "backoff_s", "max_backoff_s", "trust_env")


def parse_grading_reply(reply: str) -> float | None:
    """1.0 / 0.0 from a grading reply: JSON with a ``score`` (the outermost {...}), else the last
    CORRECT/INCORRECT word; None when neither is there (the request is retried)."""
    text = re.sub(r"<think>.*?</think>", " ", str(reply), flags=re.DOTALL | re.IGNORECASE)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            data = json.loads(text[start:end + 1])
            if isinstance(data, dict) and "score" in data:
                return 1.0 if float(data["score"]) >= 1.0 else 0.0
        except (ValueError, TypeError):
            pass
    return parse_verdict(text)


class GradingJudge:
    """An LLMJudge plus ``grade(prompt)`` for benchmark-written grading prompts (same endpoint)."""

    def __init__(self, judge, client: ChatClient) -> None:
        self.inner, self.client = judge, client
        self.model, self.url = judge.model, judge.url
        self.prompt, self.prompt_version = judge.prompt, judge.prompt_version

    def judge(self, question: str, truth, prediction: str) -> float:
        return self.inner.judge(question, truth, prediction)

    def grade(self, content: str) -> float:
        score, _ = self.client.complete([{"role": "user", "content": content}], parse_grading_reply)
        return float(score)

    def probe(self, timeout_s: float) -> None:
        self.inner.probe(timeout_s)

    def close(self) -> None:
        self.inner.close()
        self.client.close()


class GuardedJudge:
    """A judge that is taken as down after ``max_failures`` consecutive ``JudgeUnavailable``:
    later calls raise at once (no request), so a dead endpoint costs a few timeouts, not one per row.
    After a failure, the next call first probes the endpoint (``probe_timeout_s``, no retries): a
    judge that is still down costs seconds, not another full round of retries."""

    def __init__(self, judge, max_failures: int = 3, probe_timeout_s: float = 10.0) -> None:
        self.judge_impl, self.max_failures = judge, max(1, int(max_failures))
        self.probe_timeout_s = float(probe_timeout_s)
        self.consecutive = 0
        self.failures = 0
        self.last_error = ""

    @property
    def down(self) -> bool:
        return self.consecutive >= self.max_failures

    def _call(self, fn, *args) -> float:
        if self.down:
            raise JudgeUnavailable(f"judge down after {self.consecutive} failures in a row ({self.last_error})")
        try:
            if self.consecutive and hasattr(self.judge_impl, "probe"):
                self.judge_impl.probe(self.probe_timeout_s)
            score = float(fn(*args))
        except JudgeUnavailable as err:
            self.consecutive += 1
            self.failures += 1
            self.last_error = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            if self.down:
                log.error("judge failed %d times in a row; the remaining rows that need it stay unscored: %s",
                          self.consecutive, self.last_error)
            raise
        self.consecutive = 0
        return score

    def judge(self, question: str, truth, prediction: str) -> float:
        return self._call(self.judge_impl.judge, question, truth, prediction)

    @property
    def can_grade(self) -> bool:
        return hasattr(self.judge_impl, "grade")

    def grade(self, content: str) -> float:
        """A verdict for a benchmark's own grading prompt (CharXiv's ``grading_query``)."""
        return self._call(self.judge_impl.grade, content)


def build_judge(cfg_judge: dict[str, Any] | None, cache_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(judge or None, run settings) from ``judge`` (LLMJudge arguments plus ``JUDGE_RUN_KEYS``).
    The start-up probe raises :class:`EvalError` with one line naming the endpoint."""
    if not cfg_judge:
        return None, {**JUDGE_RUN_KEYS, "required": False}
    kwargs = dict(cfg_judge)
    settings = {k: kwargs.pop(k, v) for k, v in JUDGE_RUN_KEYS.items()}
    kwargs.setdefault("_target_", "metis.io.judge.LLMJudge")
    kwargs.setdefault("cache_path", str(Path(cache_dir) / "judge_cache.jsonl"))
    inner = hydra.utils.instantiate(kwargs)
    client = ChatClient(kwargs["base_url"], kwargs["model"], max_tokens=256, prompt_version="grading_query",
                        cache_path=Path(cache_dir) / "grading_cache.jsonl",
                        **{k: kwargs[k] for k in _CLIENT_KEYS if k in kwargs})
    judge = GradingJudge(inner, client)
    if settings["probe"]:
        try:
            judge.probe(float(settings["probe_timeout_s"]))
        except JudgeUnavailable as err:
            judge.close()
            raise EvalError(f"judge: {err} (judge.probe=false skips this check)") from None
    return judge, settings
