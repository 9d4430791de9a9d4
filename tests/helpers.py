"""Shared test helpers: scripted engines, a fake toolbox, config composition (on sys.path via pytest's pythonpath)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

from hydra import compose, initialize_config_dir
from PIL import Image

from metis.core.task import Task

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_cfg(*overrides: str, return_hydra_config: bool = True, experiment: str | None = "hdpo_tiny"):
    """The real configs, composed as `python -m metis.train <overrides>` would; without an
    ``experiment=`` override, ``experiment`` (default hdpo_tiny: the tests' tiny setting; None: the
    bare command's default, conf/config.yaml)."""
    overrides = list(overrides)
    if experiment and not any(o.startswith("experiment=") for o in overrides):
        overrides.insert(0, f"experiment={experiment}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


class FakeObservation:
    def __init__(self, text, images=(), error=None):
        self.text, self.images, self.error = text, list(images), error


class FakeToolBox:
    """Answers `python` calls with a text observation and one 64x64 image; anything else errors."""

    def __init__(self):
        self.started, self.ended, self.calls = [], [], []

    def specs(self):
        return [{"name": "python", "description": "run code", "parameters": {"code": "str"}}]

    def start(self, traj_id, images, meta=None):
        self.started.append(traj_id)

    def end(self, traj_id):
        self.ended.append(traj_id)

    def execute(self, traj_id, name, arguments):
        self.calls.append((traj_id, name, arguments))
        if name != "python":
            return FakeObservation(f"unknown tool {name}", error="unknown_tool")
        return FakeObservation("Code execution result:\n42\nImages:\n<image>", [Image.new("RGB", (64, 64), "red")])

    def metrics(self):
        return {"python": {"calls": len(self.calls), "latency_p50_s": 0.0}}

    def reset_metrics(self):
        pass

    def close(self):
        pass


class ScriptedEngine:
    """Emits scripted text turns per trajectory (by the trajectory's position in the first batch)."""

    def __init__(self, processor, scripts):
        self.tok = processor.tokenizer
        self.scripts = scripts
        self.turn = {}
        self.order = {}

    def bind(self, model, processor):
        pass

    def after_rollout(self):
        pass

    def sync_weights(self, model):
        pass

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        out = []
        for t in trajs:
            k = self.order.setdefault(t.traj_id, len(self.order))
            turn = self.turn.get(t.traj_id, 0)
            self.turn[t.traj_id] = turn + 1
            ids = self.tok(self.scripts[k][turn], add_special_tokens=False)["input_ids"]
            out.append(ids[:max_new_tokens])
        return out


class ScriptedHTTPServer:
    """A loopback HTTP server for tests (the one copy: judge, search and curation tests use it).

    Every POST's JSON body is appended to ``requests`` and its headers (case-insensitive lookup) to
    ``headers``; the reply is ``respond(body, index) -> (status, payload, delay_s)``: it waits
    ``delay_s``, then sends ``payload`` (bytes as they are, anything else as JSON).
    ``url`` is ``http://127.0.0.1:<port><path>``.
    """

    def __init__(self, respond: Callable[[Any, int], tuple[int, Any, float]], path: str = "") -> None:
        self.requests: list[Any] = []
        self.headers: list[Any] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                body = json.loads(raw or b"{}")
                outer.requests.append(body)
                outer.headers.append(self.headers)
                status, payload, delay = respond(body, len(outer.requests) - 1)
                if delay:
                    time.sleep(delay)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeouts are part of the tests)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_task():
    return Task(id="t0", question="<image>What is 6 * 7?", images=[Image.new("RGB", (96, 96), "white")],
                answer="42", verifier="numeric", needs_tool=False)


def tasks_with_turns(turns):
    """Tasks whose questions carry a ``(k=N)`` marker: bench's ScriptedToolCalls makes N tool calls."""
    out = []
    for i, k in enumerate(turns):
        t = make_task()
        t.id, t.question = f"t{i}", f"<image>What is {6 + i} * 7? (k={k})"
        out.append(t)
    return out


CALL = '<reason>compute</reason><tool_call>{"name": "python", "arguments": {"code": "print(6*7)"}}</tool_call>'
ANSWER = "<reason>done</reason><answer>42</answer><|im_end|>"


WRONG = "<reason>guess</reason><answer>41</answer><|im_end|>"


class CyclingEngine(ScriptedEngine):
    """Gives the k-th new trajectory script k mod len(scripts)."""

    def generate(self, trajs, max_new_tokens, stop_ids, greedy=False):
        for t in trajs:
            self.order.setdefault(t.traj_id, len(self.order))
        out = []
        for t in trajs:
            k = self.order[t.traj_id] % len(self.scripts)
            turn = self.turn.get(t.traj_id, 0)
            self.turn[t.traj_id] = turn + 1
            out.append(self.tok(self.scripts[k][turn], add_special_tokens=False)["input_ids"][:max_new_tokens])
        return out


