"""A small OpenAI-compatible chat-completions client with retries and a persistent reply cache.

The HTTP and failure policy of every LLM call in Metis (the CORRECT/INCORRECT answer judge in
:mod:`metis.io.judge`, the curation rubric judge): server down, timeouts,
5xx/429 and replies the caller's ``parse`` rejects are retried (:mod:`metis.io.http`: Retry-After or
exponential backoff, capped at ``max_backoff_s``); when the
retries are spent, :class:`JudgeUnavailable` is raised (:class:`BadReply`, a
subclass, when the server answered but never parseably). Other 4xx raise at once. Nothing is ever
scored silently.

The cache is a :class:`metis.io.jsonl.JsonlLog`: rows ``{"key", "reply"}`` with
``key = sha256(model, messages, prompt_version)``; a reply is written (and fsynced) the moment it is
parsed, so a process killed right after a request never asks again for it. A torn last line is skipped.

Deliberate simplifications: one request per call (no batching API); concurrent calls for the same
new key may both reach the server; the cache holds raw replies and is re-parsed on a hit.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import httpx

from metis.io.http import is_retryable, retry_delay
from metis.io.jsonl import JsonlLog

T = TypeVar("T")


class JudgeUnavailable(RuntimeError):
    """No usable reply could be obtained (server down, timeouts, or only unparseable replies)."""


class BadReply(JudgeUnavailable):
    """The server answered, but no reply could be parsed (after the retries)."""


class ChatClient:
    """``complete(messages, parse)`` -> parsed reply, cached on disk.

    Args:
        base_url: server root with the API prefix, e.g. ``http://127.0.0.1:8000/v1``.
        model: model name sent in the request.
        api_key_env: environment variable holding the API key (None/unset: no Authorization header).
        prompt_version: part of the cache key (change it, or the prompt, to re-ask).
        cache_path: JSON-lines reply cache; None keeps replies in memory only.
        trust_env: let httpx read proxy settings (False for a loopback server behind a proxy).
    """

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 temperature: float = 0.0, max_tokens: int = 1024, timeout_s: float = 120.0, max_retries: int = 3,
                 backoff_s: float = 1.0, max_backoff_s: float = 30.0, cache_path: str | os.PathLike[str] | None = None,
                 prompt_version: str = "v1", trust_env: bool = True, extra_body: dict[str, Any] | None = None) -> None:
        if max_retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError("need max_retries >= 0, timeout_s > 0 and backoff_s >= 0")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.prompt_version = prompt_version
        self.extra_body = dict(extra_body or {})
        key = os.environ.get(api_key_env) if api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, trust_env=trust_env)
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._log = JsonlLog(self.cache_path) if self.cache_path is not None else None
        self.requests = 0
        self.cache_hits = 0
        if self._log is not None:
            for _, row in self._log.rows():
                if "key" in row and "reply" in row:
                    self._cache[str(row["key"])] = str(row["reply"])

    def cache_key(self, messages: list[dict[str, Any]]) -> str:
        blob = json.dumps([self.model, self.prompt_version, messages], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _store(self, key: str, reply: str) -> None:
        with self._lock:
            self._cache[key] = reply
            if self._log is not None:
                self._log.append([{"key": key, "reply": reply}])

    def complete(self, messages: list[dict[str, Any]], parse: Callable[[str], T | None]) -> tuple[T, str]:
        """``(parse(reply), reply)``; a cached reply is reused without a request."""
        key = self.cache_key(messages)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            parsed = parse(cached)
            if parsed is not None:
                with self._lock:
                    self.cache_hits += 1
                return parsed, cached
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature,
                                   "max_tokens": self.max_tokens, **self.extra_body}
        last, answered, retry_after = "no attempt made", False, None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(retry_delay(attempt, self.backoff_s, self.max_backoff_s, retry_after))
                retry_after = None
            with self._lock:
                self.requests += 1
            try:
                resp = self._client.post(self.url, json=payload, headers=self._headers)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout_s} s"
                continue
            except httpx.TransportError as err:
                last = f"cannot reach the server ({type(err).__name__}: {err})"
                continue
            if is_retryable(resp.status_code):
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                retry_after = resp.headers.get("retry-after")
                continue
            if resp.status_code >= 400:
                raise JudgeUnavailable(f"LLM judge {self.model!r} at {self.url} refused the request (HTTP "
                                       f"{resp.status_code}: {resp.text[:200]}); check base_url, model and API key")
            try:
                reply = str(resp.json()["choices"][0]["message"]["content"] or "")
            except (ValueError, KeyError, IndexError, TypeError):
                last = f"malformed response body {resp.text[:200]!r}"
                continue
            answered = True
            parsed = parse(reply)
            if parsed is None:
                last = f"unparseable reply {reply[:200]!r}"
                continue
            self._store(key, reply)
            return parsed, reply
        cls = BadReply if answered else JudgeUnavailable
        raise cls(f"LLM judge {self.model!r} at {self.url} gave no usable reply after {self.max_retries + 1} "
                  f"attempts; last error: {last}")

    def probe(self, timeout_s: float = 10.0) -> str:
        """One uncached request ("Reply with OK.") that fails fast: a run checks its endpoint at start.

        Returns the reply text. Raises :class:`JudgeUnavailable` with one line naming the endpoint
        and the model when the server cannot be reached, times out, refuses the request (bad key,
        unknown model) or answers with a body that is not a chat completion. No retries."""
        payload = {"model": self.model, "messages": [{"role": "user", "content": "Reply with OK."}],
                   "temperature": 0.0, "max_tokens": 8, **self.extra_body}
        where = f"LLM endpoint {self.url} (model {self.model!r})"
        with self._lock:
            self.requests += 1
        try:
            resp = self._client.post(self.url, json=payload, headers=self._headers, timeout=timeout_s)
        except httpx.TimeoutException:
            raise JudgeUnavailable(f"{where} did not answer within {timeout_s} s") from None
        except httpx.TransportError as err:
            raise JudgeUnavailable(f"{where} cannot be reached ({type(err).__name__}: {err})") from None
        if resp.status_code >= 400:
            raise JudgeUnavailable(f"{where} answered HTTP {resp.status_code}: {resp.text[:200]}; "
                                   "check base_url, model and the API key")
        try:
            return str(resp.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeUnavailable(f"{where} answered a body that is not a chat completion: "
                                   f"{resp.text[:200]!r}") from None

    def close(self) -> None:
        self._client.close()
