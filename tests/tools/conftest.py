"""Fixtures for the tool tests: a private cache dir, loopback HTTP servers, shared interpreters."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest



@pytest.fixture(scope="session", autouse=True)
def _tools_cache(tmp_path_factory) -> Iterator[str]:
    """Generated corpora, BM25 indexes and search caches go to a temp dir, not ~/.cache."""
    old = os.environ.get("METIS_CACHE")
    path = str(tmp_path_factory.mktemp("metis-tools-cache"))
    os.environ["METIS_CACHE"] = path
    yield path
    if old is None:
        os.environ.pop("METIS_CACHE", None)
    else:
        os.environ["METIS_CACHE"] = old


class ScriptedServer:
    """A loopback HTTP server answering POSTs from a script of (status, body, delay_s) steps;
    the last step repeats. Records every request body."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any, float]] = [(200, {}, 0.0)]
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
                outer.requests.append(json.loads(body or b"{}"))
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                idx = min(len(outer.requests) - 1, len(outer.script) - 1)
                status, payload, delay = outer.script[idx]
                if delay:
                    time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/search"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def http_server() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


class TCPListener:
    """A TCP server on 127.0.0.1 that counts accepted connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture()
def tcp_listener() -> Iterator[TCPListener]:
    listener = TCPListener()
    yield listener
    listener.close()
