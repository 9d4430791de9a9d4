"""A warm pool of sandboxed interpreters, refilled by one long-lived spawner thread.

Every interpreter process is started from the spawner thread, never from the caller's thread:
PR_SET_PDEATHSIG (bwrap ``--die-with-parent`` and the fallback's prctl) fires when the *thread*
that forked the child exits, and callers are often short-lived thread-pool workers.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable

from metis.tools.sandbox import Interpreter, SandboxError

log = logging.getLogger("metis.tools.pool")


class _Request:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.interp: Interpreter | None = None
        self.error: BaseException | None = None


class InterpreterPool:
    """Keeps ``size`` started interpreters; ``acquire`` hands one out (or starts one now)."""

    def __init__(self, factory: Callable[[], Interpreter], size: int = 4,
                 startup_timeout_s: float = 60.0) -> None:
        self.factory, self.size, self.startup_timeout_s = factory, max(0, int(size)), startup_timeout_s
        self._ready: collections.deque[Interpreter] = collections.deque()
        self._requests: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.spawned = 0
        self._thread = threading.Thread(target=self._loop, name="metis-python-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._closed and not self._requests and len(self._ready) >= self.size:
                    self._cond.wait()
                if self._closed:
                    return
                req = self._requests.popleft() if self._requests else None
            try:
                interp = self.factory()
                self.spawned += 1
                failures = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the caller
                failures += 1
                log.error("starting a python interpreter failed: %s", exc)
                if req is not None:
                    req.error = exc
                    req.done.set()
                else:
                    time.sleep(min(30.0, 0.5 * 2 ** failures))
                continue
            if req is not None:
                req.interp = interp
                req.done.set()
            else:
                with self._cond:
                    if self._closed:
                        interp.kill()
                        return
                    self._ready.append(interp)

    def acquire(self) -> Interpreter:
        """A started interpreter that has said "ready". Raises SandboxError on failure."""
        last: BaseException | None = None
        for _attempt in range(3):
            interp = None
            with self._cond:
                if self._closed:
                    raise SandboxError("the interpreter pool is closed")
                while self._ready and interp is None:
                    cand = self._ready.popleft()
                    if cand.alive:
                        interp = cand
                    else:
                        cand.kill()
                req = None
                if interp is None:
                    req = _Request()
                    self._requests.append(req)
                self._cond.notify_all()
            if req is not None:
                if not req.done.wait(self.startup_timeout_s):
                    raise SandboxError("timed out waiting for a new interpreter")
                if req.error is not None:
                    raise SandboxError(f"cannot start an interpreter: {req.error}") from req.error
                interp = req.interp
            assert interp is not None
            try:
                interp.wait_ready(self.startup_timeout_s)
                return interp
            except SandboxError as exc:
                last = exc
        raise SandboxError(f"no interpreter could be started: {last}")

    def idle(self) -> int:
        with self._cond:
            return len(self._ready)

    def wait_full(self, timeout: float = 60.0) -> bool:
        """Block until the pool holds ``size`` ready interpreters (benchmarks, tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                items = list(self._ready)
            if len(items) >= self.size:
                try:
                    for it in items:
                        it.wait_ready(max(0.1, deadline - time.monotonic()))
                    return True
                except SandboxError:
                    with self._cond:
                        self._ready = collections.deque(i for i in self._ready if i.alive)
                        self._cond.notify_all()
            time.sleep(0.02)
        return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            ready, self._ready = list(self._ready), collections.deque()
            for req in self._requests:
                req.error = SandboxError("pool closed")
                req.done.set()
            self._cond.notify_all()
        for interp in ready:
            interp.kill()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
