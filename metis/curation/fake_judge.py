"""A rule-based stand-in for the LLM judge: a real OpenAI-compatible HTTP server on loopback.

For tests and offline demos of the ``judge`` stage only; it is not a model. It reads the rubric
prompt of :mod:`metis.curation.judge` and answers with the JSON the rubric asks for:

* tool call ``k`` is justified when observation ``k`` returned an image or contains the final
  answer (its result was used), otherwise not ("the call's output plays no part in the answer");
* ``visual_relevance`` 4 when images were attached (or listed), else 2;
* ``reasoning_coherence`` 4 when there is a final answer, else 2.

``fail_after=N`` makes every request after the ``N``-th answer HTTP 503 (a judge going down);
``delay_s`` slows each reply. Every request is recorded (``requests``: sample id per request).

Run one by hand: ``python -m metis.curation.fake_judge --port 8011``.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HEADER = re.compile(r"^\[(assistant|user|system|observation \d+|tool call \d+: .*)\]$")


def _field(prompt: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}: (.*)$", prompt, re.M)
    return m.group(1).strip() if m else ""


def judge_prompt(prompt: str, num_attached: int) -> dict[str, Any]:
    """The rule-based verdict for one rubric prompt (see the module docstring)."""
    final = _field(prompt, "Final answer")
    final = "" if final == "(none)" else final
    transcript = prompt.split("Transcript:\n", 1)[-1].split("\n\nReply with", 1)[0]
    observations: list[list[str]] = []
    current: list[str] | None = None
    for line in transcript.splitlines():
        head = _HEADER.match(line.strip())
        if head:
            current = [] if head.group(1).startswith("observation") else None
            if current is not None:
                observations.append(current)
        elif current is not None:
            current.append(line)
    calls = []
    for k, lines in enumerate(observations, start=1):
        text = "\n".join(lines)
        used = "<image" in text or (bool(final) and final in text)
        calls.append({"call": k, "justified": used,
                      "reason": "its result is used for the answer" if used
                      else "the call's output plays no part in the answer"})
    images = num_attached or int(_field(prompt, "Images").split(" ")[0] or 0)
    return {"visual_relevance": 4 if images else 2, "reasoning_coherence": 4 if final else 2, "tool_calls": calls,
            "summary": f"{sum(c['justified'] for c in calls)} of {len(calls)} tool calls justified."}


class FakeJudgeServer:
    """The rule-based judge on ``http://127.0.0.1:<port>/v1`` (``port=0``: a free one)."""

    def __init__(self, port: int = 0, delay_s: float = 0.0, fail_after: int | None = None,
                 host: str = "127.0.0.1") -> None:
        self.delay_s, self.fail_after = delay_s, fail_after
        self.requests: list[str] = []  # the sample id of every request, in arrival order
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) or b"{}")
                status, payload = outer.handle(body)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def handle(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        content = (body.get("messages") or [{}])[-1].get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        prompt = "".join(p.get("text") or "" for p in parts if p.get("type") == "text")
        attached = sum(1 for p in parts if p.get("type") == "image_url")
        with self._lock:
            self.requests.append(_field(prompt, "Sample"))
            n = len(self.requests)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_after is not None and n > self.fail_after:
            return 503, {"error": "the judge is down"}
        reply = "```json\n" + json.dumps(judge_prompt(prompt, attached)) + "\n```"
        return 200, {"choices": [{"message": {"role": "assistant", "content": reply}}]}

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeJudgeServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the rule-based curation judge on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    server = FakeJudgeServer(port=args.port)
    print(f"fake judge at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        server.thread.join()
    except KeyboardInterrupt:
        server.close()


if __name__ == "__main__":
    main()
