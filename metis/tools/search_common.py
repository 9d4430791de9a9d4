"""Shared parts of the search tools: the persistent query cache and HTTP POST with retries.

Deliberate simplifications: the cache never expires entries (delete the file to refresh) and
stores only successful results; retries follow :mod:`metis.io.http` (Retry-After or exponential
backoff, capped at ``max_backoff_s``) without jitter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from typing import Any

import httpx

from metis.io.http import is_retryable, retry_delay

log = logging.getLogger("metis.tools.search")


class ProviderError(RuntimeError):
    """A search back-end failed; ``kind`` is the observation error kind (timeout / execution_error)."""

    def __init__(self, message: str, kind: str = "execution_error") -> None:
        super().__init__(message)
        self.kind = kind


class QueryCache:
    """A persistent key -> JSON cache in one SQLite file, safe across threads and processes."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False)
        with self._lock:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError:
                pass
            self._db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, "
                             "value TEXT NOT NULL, created REAL NOT NULL)")
            self._db.commit()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def make_key(namespace: str, payload: Any) -> str:
        blob = json.dumps([namespace, payload], sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        blob = json.dumps(value, ensure_ascii=False)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO cache (key, value, created) VALUES (?, ?, ?)",
                             (key, blob, time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM cache").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def post_json(client: httpx.Client, url: str, payload: dict, headers: dict[str, str],
              timeout_s: float, max_retries: int, backoff_s: float, max_backoff_s: float = 30.0) -> Any:
    """POST ``payload``; retry on 408/409/425/429, 5xx and transport errors; raise ProviderError at the end."""
    last = "no attempt"
    kind = "execution_error"
    retry_after = None
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(retry_delay(attempt, backoff_s, max_backoff_s, retry_after))
            retry_after = None
        try:
            resp = client.post(url, json=payload, headers=headers, timeout=timeout_s)
        except httpx.TimeoutException as exc:
            last, kind = f"timed out after {timeout_s:g} s ({type(exc).__name__})", "timeout"
            continue
        except httpx.HTTPError as exc:
            last, kind = f"{type(exc).__name__}: {exc}", "execution_error"
            continue
        if is_retryable(resp.status_code):
            last, kind = f"HTTP {resp.status_code}", "execution_error"
            retry_after = resp.headers.get("retry-after")
            continue
        if resp.status_code >= 400:
            raise ProviderError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError:
            raise ProviderError("the search service returned invalid JSON") from None
    raise ProviderError(f"the search service is unavailable ({last}) after "
                        f"{max_retries + 1} attempt(s)", kind)


def api_key_headers(env_var: str | None, header: str) -> dict[str, str]:
    """``{header: $env_var}`` when the variable is set, else {} (the key never enters config)."""
    if not env_var:
        return {}
    key = os.environ.get(env_var, "")
    if not key:
        log.warning("search API key variable %s is not set", env_var)
        return {}
    return {header: key}
