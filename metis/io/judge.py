"""LLM-as-judge answer checking (the paper scores answers with an LLM judge: CORRECT/INCORRECT).

Talks to any OpenAI-compatible chat-completions server (OpenAI, vLLM, SGLang) over httpx.
A verdict is cached on disk (a :class:`metis.io.jsonl.JsonlLog`) under sha256(question, ground truth, prediction, model,
prompt version), so each triple is judged once across runs.

Failure policy: a server that is down, times out, answers 5xx/429 or replies with something
that is neither CORRECT nor INCORRECT is retried with exponential backoff; when the retries are
spent, `JudgeUnavailable` is raised. Other 4xx (bad key, unknown model) raise at once. A
failure is never scored as "wrong".

Deliberate simplifications: one request per (question, ground truth, prediction) (no batching);
concurrent calls for the same new triple may both reach the server; the verdict is the last
CORRECT/INCORRECT word of the reply after any `<think>…</think>` block is removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

from metis.io.chat_client import ChatClient, JudgeUnavailable  # noqa: F401  (JudgeUnavailable re-exported)
from metis.io.jsonl import JsonlLog
from metis.rl.verifiers import max_over_truths

JUDGE_PROMPT_VERSION = "v1"
JUDGE_PROMPT = (
    "You are a strict grader. Decide whether the model's final answer to the question is correct, "
    "given the ground-truth answer.\n\n"
    "Question: {question}\n"
    "Ground-truth answer: {ground_truth}\n"
    "Model answer: {prediction}\n\n"
    "The model answer is CORRECT if it states the same final answer as the ground truth: equivalent "
    "numbers, expressions, units, option letters or wording count as the same; extra explanation is "
    "fine as long as the final answer is unambiguous. Otherwise it is INCORRECT (wrong, incomplete, "
    "hedging between several answers, or missing).\n"
    "Reply with exactly one word: CORRECT or INCORRECT."
)

_VERDICT_RE = re.compile(r"\b(INCORRECT|CORRECT)\b")
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def parse_verdict(reply: str) -> float | None:
    """1.0 for CORRECT, 0.0 for INCORRECT (the last such word wins), None when neither appears."""
    found = _VERDICT_RE.findall(_THINK_RE.sub(" ", reply).upper())
    if not found:
        return None
    return 1.0 if found[-1] == "CORRECT" else 0.0


class LLMJudge:
    """Scores a prediction against ground truth(s) with an LLM; 1.0 (CORRECT) or 0.0 (INCORRECT).

    Args:
        base_url: server root including the API prefix, e.g. "http://127.0.0.1:8000/v1".
        model: model name sent in the request.
        api_key_env: name of the environment variable holding the API key; when it is unset or
            None no Authorization header is sent (local vLLM servers need none).
        timeout_s: per-request timeout. max_retries: retries after the first attempt.
        backoff_s: first retry delay, doubled on each retry, capped at max_backoff_s.
        cache_path: JSON-lines verdict cache; None disables caching on disk (memory only).
        trust_env: let httpx read proxy settings from the environment (False for a local server
            behind an HTTP(S)_PROXY that cannot reach it).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.0,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        max_tokens: int = 16,
        cache_path: str | os.PathLike[str] | None = None,
        prompt: str = JUDGE_PROMPT,
        prompt_version: str = JUDGE_PROMPT_VERSION,
        trust_env: bool = True,
    ) -> None:
        self._chat = ChatClient(base_url, model, api_key_env=api_key_env, temperature=temperature,
                                max_tokens=max_tokens, timeout_s=timeout_s, max_retries=max_retries,
                                backoff_s=backoff_s, max_backoff_s=max_backoff_s, cache_path=None,
                                prompt_version=prompt_version, trust_env=trust_env)
        self.url, self.model = self._chat.url, model
        self.prompt = prompt
        self.prompt_version = prompt_version
        self._lock = threading.Lock()
        self._cache: dict[str, float] = {}
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._log = JsonlLog(self.cache_path) if self.cache_path is not None else None
        self.cache_hits = 0
        if self._log is not None:
            self._load_cache(self._log)

    @property
    def requests(self) -> int:
        """HTTP requests made so far (retries included)."""
        return self._chat.requests

    # ------------------------------------------------------------------ cache
    def _load_cache(self, cache: JsonlLog) -> None:
        for _, row in cache.rows():  # a torn last line after a crash is skipped, not fatal
            try:
                self._cache[str(row["key"])] = float(row["score"])
            except (ValueError, KeyError, TypeError):
                continue

    def cache_key(self, question: str, ground_truth: str, prediction: str) -> str:
        blob = json.dumps([question, ground_truth, prediction, self.model, self.prompt_version], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _store(self, key: str, score: float, reply: str) -> None:
        with self._lock:
            self._cache[key] = score
            if self._log is not None:
                self._log.append([{"key": key, "score": score, "reply": reply[:500]}])

    # ------------------------------------------------------------------ requests
    def _ask(self, content: str) -> tuple[float, str]:
        return self._chat.complete([{"role": "user", "content": content}], parse_verdict)

    # ------------------------------------------------------------------ public
    def judge_one(self, question: str, ground_truth: str, prediction: str) -> float:
        """Verdict for one ground truth (cached)."""
        key = self.cache_key(question, ground_truth, prediction)
        with self._lock:
            if key in self._cache:
                self.cache_hits += 1
                return self._cache[key]
        content = self.prompt.format(question=question, ground_truth=ground_truth, prediction=prediction)
        score, reply = self._ask(content)
        self._store(key, score, reply)
        return score

    def judge(self, question: str, ground_truth: str | list[str], prediction: str | None) -> float:
        """Max verdict over the ground truths; 0.0 without a request for a None/empty prediction.

        Raises JudgeUnavailable when no verdict can be obtained.
        """
        if prediction is None or not prediction.strip():
            return 0.0
        return max_over_truths(ground_truth, lambda gt: self.judge_one(question, gt, prediction))

    def __call__(self, prediction: str | None, ground_truth: str | list[str], question: str = "") -> float:
        """Verifier-style call order (prediction, ground_truth), plus the question."""
        return self.judge(question, ground_truth, prediction)

    def probe(self, timeout_s: float = 10.0) -> None:
        """Fail fast at start-up: raises :class:`JudgeUnavailable` (one line naming the endpoint)
        when the judge cannot answer a trivial request. See :meth:`ChatClient.probe`."""
        self._chat.probe(timeout_s)

    def close(self) -> None:
        self._chat.close()

    def __enter__(self) -> "LLMJudge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
