"""The one HTTP retry policy of Metis (LLM judges, search back-ends).

A request is retried on transport errors, timeouts and the statuses of :func:`is_retryable`
(408, 409, 425, 429 and 5xx); before retry number ``attempt`` the caller sleeps
:func:`retry_delay`: the server's ``Retry-After`` when it sends one (seconds or an HTTP date),
else exponential backoff ``backoff_s * 2 ** (attempt - 1)``, both capped at ``max_backoff_s`` so
one slow server can never stall a run for long.
"""

from __future__ import annotations

import email.utils
import time

RETRY_STATUS = frozenset({408, 409, 425, 429})


def is_retryable(status: int) -> bool:
    return status in RETRY_STATUS or status >= 500


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(attempt: int, backoff_s: float, max_backoff_s: float, retry_after: str | None = None) -> float:
    """Seconds to wait before retry ``attempt`` (1-based); see the module docstring."""
    server = _retry_after_s(retry_after)
    delay = server if server is not None else backoff_s * 2 ** max(0, attempt - 1)
    return min(delay, max_backoff_s)
