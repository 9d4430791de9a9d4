"""A loopback OpenAI-compatible judge for scoring tests: the verdict depends on the request."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class VerdictServer:
    """CORRECT when the prompt's model answer equals ``right``; HTTP 503 while ``down`` or when
    the prompt contains one of ``fail_on``; the first ``barrier_n`` requests wait for each other
    (proving they are in flight together; the start-up probe does not count) and get 500 if they never meet."""

    def __init__(self, right: str = "42", fail_on: tuple[str, ...] = (), barrier_n: int = 0) -> None:
        self.right, self.fail_on, self.down = right, fail_on, False
        self.prompts: list[str] = []
        self.barrier = threading.Barrier(barrier_n, timeout=10) if barrier_n > 1 else None
        self.waited = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][-1]["content"]
                outer.prompts.append(content)
                status, verdict = 200, "INCORRECT"
                probe = content == "Reply with OK."
                if outer.barrier is not None and not probe and outer.waited < outer.barrier.parties:
                    outer.waited += 1
                    try:
                        outer.barrier.wait()
                    except threading.BrokenBarrierError:
                        status = 500
                if outer.down or any(s in content for s in outer.fail_on):
                    status = 503
                elif f"Model answer: {outer.right}\n" in content or probe:
                    verdict = "CORRECT"
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def judged(self) -> list[str]:
        return [p for p in self.prompts if p != "Reply with OK."]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
