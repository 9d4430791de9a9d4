"""Fixtures for the tool tests: a private cache dir, loopback HTTP servers, shared interpreters."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from helpers import ScriptedHTTPServer


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


@pytest.fixture()
def http_server() -> Iterator[ScriptedHTTPServer]:
    """Answers POSTs from ``server.script``, a list of (status, body, delay_s) steps; the last step repeats."""
    server = ScriptedHTTPServer(lambda body, n: server.script[min(n, len(server.script) - 1)], "/search")
    server.script = [(200, {}, 0.0)]
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
