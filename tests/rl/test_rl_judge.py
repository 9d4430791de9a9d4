"""LLMJudge against a real HTTP server on 127.0.0.1 with scripted replies."""

import socket
import time

import pytest

from metis.io.judge import JudgeUnavailable, LLMJudge, parse_verdict

from helpers import ScriptedHTTPServer


def chat_server(script) -> ScriptedHTTPServer:
    """Each request pops the next action: a reply string, an int status, ("sleep", s, reply) or ("raw", body)."""
    actions = list(script)

    def respond(body, index):
        action = actions.pop(0) if actions else "CORRECT"
        if isinstance(action, int):
            return action, b'{"error": "scripted"}', 0.0
        delay = 0.0
        if isinstance(action, tuple) and action[0] == "sleep":
            delay, action = action[1], action[2]
        elif isinstance(action, tuple) and action[0] == "raw":
            return 200, action[1].encode(), 0.0
        return 200, {"choices": [{"message": {"role": "assistant", "content": action}}]}, delay

    return ScriptedHTTPServer(respond, "/v1")


@pytest.fixture
def serve():
    servers = []

    def start(*script):
        s = chat_server(script)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def make(url, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 2.0)
    return LLMJudge(url, "judge-model", api_key_env="METIS_TEST_JUDGE_KEY", trust_env=False, **kw)


def test_scripted_verdicts_and_request(serve, monkeypatch):
    monkeypatch.setenv("METIS_TEST_JUDGE_KEY", "sk-test")
    srv = serve("CORRECT", "INCORRECT", "<think>it might be INCORRECT</think>\nCORRECT")
    with make(srv.url) as judge:
        assert judge.judge("What color?", "red", "Red.") == 1.0
        assert judge.judge("What color?", "red", "blue") == 0.0
        assert judge("crimson", "red", question="What color?") == 1.0
    body = srv.requests[0]
    assert body["model"] == "judge-model" and body["temperature"] == 0.0
    prompt = body["messages"][0]["content"]
    assert "What color?" in prompt and "red" in prompt and "Red." in prompt and "CORRECT or INCORRECT" in prompt
    assert srv.headers[0]["Authorization"] == "Bearer sk-test"


def test_no_key_no_auth_header(serve, monkeypatch):
    monkeypatch.delenv("METIS_TEST_JUDGE_KEY", raising=False)
    srv = serve("CORRECT")
    with make(srv.url) as judge:
        assert judge.judge("q", "a", "a") == 1.0
    assert "Authorization" not in srv.headers[0]


def test_slow_reply_trips_timeout(serve):
    srv = serve(("sleep", 1.0, "CORRECT"), ("sleep", 1.0, "CORRECT"))
    with make(srv.url, timeout_s=0.2, max_retries=1) as judge:
        t0 = time.monotonic()
        with pytest.raises(JudgeUnavailable, match="timed out"):
            judge.judge("q", "a", "b")
        assert time.monotonic() - t0 < 1.5
    assert len(srv.requests) == 2


def test_500_then_success(serve):
    srv = serve(500, "CORRECT")
    with make(srv.url, max_retries=2) as judge:
        assert judge.judge("q", "a", "a") == 1.0
    assert len(srv.requests) == 2


def test_500_forever_raises(serve):
    srv = serve(503, 503)
    with make(srv.url, max_retries=1) as judge:
        with pytest.raises(JudgeUnavailable, match="HTTP 503"):
            judge.judge("q", "a", "a")
    assert len(srv.requests) == 2


def test_garbage_retried_then_raises(serve):
    srv = serve("I am not sure.", ("raw", "not json"))
    with make(srv.url, max_retries=1) as judge:
        with pytest.raises(JudgeUnavailable, match="malformed|unparseable"):
            judge.judge("q", "a", "b")
    assert len(srv.requests) == 2
    srv2 = serve("maybe?", "INCORRECT")
    with make(srv2.url, max_retries=1) as judge:
        assert judge.judge("q", "a", "b") == 0.0


def test_client_error_is_not_retried(serve):
    srv = serve(401)
    with make(srv.url, max_retries=3) as judge:
        with pytest.raises(JudgeUnavailable, match="HTTP 401"):
            judge.judge("q", "a", "b")
    assert len(srv.requests) == 1


def test_down_server_raises_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with make(f"http://127.0.0.1:{port}/v1", max_retries=1) as judge:
        with pytest.raises(JudgeUnavailable, match="cannot reach"):
            judge.judge("q", "a", "b")


def test_cache_hit_makes_no_second_request(serve, tmp_path):
    cache = tmp_path / "judge" / "cache.jsonl"
    srv = serve("CORRECT", "INCORRECT")
    with make(srv.url, cache_path=cache) as judge:
        assert judge.judge("q", "a", "a!") == 1.0
        assert judge.judge("q", "a", "a!") == 1.0
        assert len(srv.requests) == 1 and judge.cache_hits == 1
    with make(srv.url, cache_path=cache) as again:  # a new process would read the file
        assert again.judge("q", "a", "a!") == 1.0
    assert len(srv.requests) == 1
    assert len(cache.read_text().splitlines()) == 1
    other = LLMJudge(srv.url, "other-model", api_key_env=None, trust_env=False, cache_path=cache)
    assert other.judge("q", "a", "a!") == 0.0  # the model is part of the key
    assert len(srv.requests) == 2
    other.close()


def test_empty_prediction_and_several_truths(serve):
    srv = serve("INCORRECT", "CORRECT")
    with make(srv.url) as judge:
        assert judge.judge("q", "a", None) == 0.0 and judge.judge("q", "a", "  ") == 0.0
        assert len(srv.requests) == 0
        assert judge.judge("q", ["x", "y", "z"], "y") == 1.0
    assert len(srv.requests) == 2  # stopped at the first CORRECT


def test_parse_verdict():
    assert parse_verdict("INCORRECT") == 0.0
    assert parse_verdict("correct.") == 1.0
    assert parse_verdict("<think>INCORRECT?</think> CORRECT") == 1.0
    assert parse_verdict("Not sure") is None


def test_probe_fails_fast_on_down_refusing_or_garbage_endpoint(serve):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeUnavailable, match=f"127.0.0.1:{port}.*cannot be reached"):
        make(f"http://127.0.0.1:{port}/v1").probe(timeout_s=2)
    with pytest.raises(JudgeUnavailable, match="HTTP 401"):
        make(serve(401).url).probe()
    with pytest.raises(JudgeUnavailable, match="not a chat completion"):
        make(serve(("raw", "not json at all")).url).probe()
    ok = serve("OK")
    make(ok.url).probe()
    assert len(ok.requests) == 1
