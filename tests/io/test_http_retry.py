"""One retry policy for every HTTP caller (metis.io.http): the chat client and the search tools
wait what the server asks (Retry-After) or back off exponentially, always capped."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from metis.io import chat_client as chat_mod
from metis.io.chat_client import ChatClient
from metis.io.http import is_retryable, retry_delay
from metis.tools import search_common
from metis.tools.search_common import ProviderError, post_json


def test_retry_delay_policy():
    assert [retry_delay(a, 1.0, 30.0) for a in (1, 2, 3, 6)] == [1.0, 2.0, 4.0, 30.0]  # capped
    assert retry_delay(1, 1.0, 30.0, "7") == 7.0                 # the server's wish wins over backoff
    assert retry_delay(1, 1.0, 30.0, "3600") == 30.0             # but never past the cap
    later = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= retry_delay(1, 1.0, 30.0, later) <= 5.0         # HTTP-date form
    assert retry_delay(2, 1.0, 30.0, "soon") == 2.0              # unparseable: backoff
    assert all(is_retryable(s) for s in (408, 409, 425, 429, 500, 503)) and not is_retryable(404)


def _scripted(responses):
    """An httpx transport answering the scripted (status, headers, json) triples in order."""
    calls = []

    def handler(request):
        status, headers, body = responses[min(len(calls), len(responses) - 1)]
        calls.append(request)
        return httpx.Response(status, headers=headers, json=body)

    return httpx.MockTransport(handler), calls


@pytest.fixture
def sleeps(monkeypatch):
    waited: list[float] = []
    monkeypatch.setattr(chat_mod.time, "sleep", waited.append)
    monkeypatch.setattr(search_common.time, "sleep", waited.append)
    return waited


def test_chat_client_honours_retry_after(sleeps):
    ok = {"choices": [{"message": {"content": "CORRECT"}}]}
    transport, calls = _scripted([(429, {"Retry-After": "4"}, {}), (503, {}, {}), (200, {}, ok)])
    client = ChatClient("http://judge.invalid/v1", "m", api_key_env=None, backoff_s=0.5, max_backoff_s=10)
    client._client = httpx.Client(transport=transport)
    parsed, reply = client.complete([{"role": "user", "content": "q"}], lambda r: r if r == "CORRECT" else None)
    assert parsed == "CORRECT" and len(calls) == 3
    assert sleeps == [4.0, 1.0]  # Retry-After, then backoff 0.5 * 2


def test_search_post_json_same_policy(sleeps):
    transport, calls = _scripted([(503, {"Retry-After": "60"}, {}), (200, {}, {"results": [1]})])
    with httpx.Client(transport=transport) as client:
        out = post_json(client, "http://search.invalid", {"q": "x"}, {}, 5.0, max_retries=2, backoff_s=0.5,
                        max_backoff_s=10.0)
    assert out == {"results": [1]} and sleeps == [10.0]  # the server asked 60 s: capped at 10
    transport, _ = _scripted([(500, {}, {})])
    with httpx.Client(transport=transport) as client, pytest.raises(ProviderError, match="unavailable"):
        post_json(client, "http://search.invalid", {}, {}, 5.0, max_retries=1, backoff_s=0.5)
