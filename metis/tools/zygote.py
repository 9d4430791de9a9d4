"""The parent side of the fork server (``_zygote.py``): one bwrap sandbox per PythonTool whose
zygote forks every fresh interpreter into its own namespaces, uid, limits and seccomp filter.

Used in ``bwrap`` mode when the parent is root (``fork_server: true``, the default); as
non-root each interpreter keeps its own bwrap (a user namespace cannot remount ``/proc`` under
bwrap's read-only overmounts). A fresh interpreter then costs two forks of a process that has
already imported numpy, PIL and matplotlib instead of a Python start-up plus those imports.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import asdict

from metis.tools.isolation import SandboxConfig, SandboxError, bwrap_command, sandbox_env
from metis.tools.sandbox import SCRATCH_PREFIX, Interpreter, _live, file_tail, kill_uid
from metis.tools.uid_lease import lease_uid, release_uid

SANDBOX_TMP = "/tmp"


class Zygote:
    """The fork server process and its control socket. Thread-safe; started on first use."""

    def __init__(self, cfg: SandboxConfig, startup_timeout_s: float = 60.0) -> None:
        self.cfg, self.timeout = cfg, startup_timeout_s
        self.root = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-zygote-",
                                     dir=cfg.scratch_root)
        os.chmod(self.root, 0o711)
        self._log = tempfile.TemporaryFile(dir=cfg.scratch_root)
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self._buf = b""
        self.closed = False

    def _start(self) -> None:
        self._stop()
        parent, child = socket.socketpair()
        wcfg = {k: v for k, v in asdict(self.cfg).items() if k not in ("extra_env", "scratch_root")}
        cmd = bwrap_command(self.root, [json.dumps(wcfg)], sandbox_env("/scratch", self.cfg),
                            self.cfg, as_root=True, zygote=True)
        try:
            self.proc = subprocess.Popen(cmd, stdin=child, stdout=subprocess.DEVNULL,
                                         stderr=self._log, env={}, close_fds=True)
        finally:
            child.close()
        self.sock, self._buf = parent, b""
        msg = self._readline(time.monotonic() + self.timeout)
        if msg.get("op") != "ready":
            raise SandboxError(f"the fork server did not start: {self.log_tail()}")

    def _readline(self, deadline: float) -> dict:
        assert self.sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise SandboxError(f"the fork server did not answer: {self.log_tail()}")
            data = self.sock.recv(1 << 16)
            if not data:
                raise SandboxError(f"the fork server exited: {self.log_tail()}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def spawn(self, name: str, wcfg: dict) -> tuple[str, int, int]:
        """Fork one interpreter with ``<root>/<name>`` as /scratch. Returns (id, fd to write
        requests to, fd to read replies from)."""
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        key = uuid.uuid4().hex
        try:
            with self._lock:
                if self.closed:
                    raise SandboxError("the fork server is closed")
                for attempt in (0, 1):  # a dead zygote is restarted once
                    try:
                        if self.proc is None or self.proc.poll() is not None:
                            self._start()
                        line = json.dumps({"op": "spawn", "id": key, "name": name, "cfg": wcfg})
                        socket.send_fds(self.sock, [line.encode() + b"\n"], [to_r, from_w])
                        reply = self._readline(time.monotonic() + self.timeout)
                        break
                    except (OSError, SandboxError):
                        if attempt:
                            raise
                        self._stop()
            if "error" in reply:
                raise SandboxError(f"the fork server could not start an interpreter: "
                                   f"{reply['error']}")
        except BaseException:
            os.close(to_w)
            os.close(from_r)
            raise
        finally:
            os.close(to_r)
            os.close(from_w)
        return key, to_w, from_r

    def kill(self, key: str) -> None:
        """SIGKILL the interpreter's namespace init: the kernel kills everything in it."""
        with self._lock:
            if self.sock is None:
                return
            try:
                self.sock.sendall(json.dumps({"op": "kill", "id": key}).encode() + b"\n")
            except OSError:
                pass

    def log_tail(self) -> str:
        return file_tail(self._log)

    def _stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.kill()  # --die-with-parent's pid namespace: every interpreter goes
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc = None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._stop()
        shutil.rmtree(self.root, ignore_errors=True)
        self._log.close()


class ForkedInterpreter(Interpreter):
    """An ``Interpreter`` forked by a ``Zygote`` (same protocol, same isolation)."""

    def __init__(self, cfg: SandboxConfig, zygote: Zygote) -> None:  # noqa: D107
        self.cfg, self.mode, self.zygote = cfg, "bwrap", zygote
        self.as_root = True
        self.uid = lease_uid(cfg.uid_base)
        self.proc = None  # type: ignore[assignment]
        self._in = self._out = -1
        self.ready = self.dead = False
        self._ready_lock = threading.Lock()
        try:
            self.scratch = tempfile.mkdtemp(prefix="i-", dir=zygote.root)
            os.chown(self.scratch, self.uid, self.uid)
            os.chmod(self.scratch, 0o711)
            wcfg = {k: v for k, v in asdict(cfg).items() if k not in ("extra_env", "scratch_root")}
            wcfg.update(uid=self.uid, gid=self.uid, parent_pid=None, guard=False, freeze=True)
            self.key, self._in, self._out = zygote.spawn(os.path.basename(self.scratch), wcfg)
        except BaseException:
            self.dead = True
            release_uid(self.uid)
            if hasattr(self, "scratch"):
                shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        os.set_blocking(self._in, False)
        self.created = time.monotonic()
        _live.add(self)

    def startup_log(self) -> str:
        return self.zygote.log_tail()

    @property
    def alive(self) -> bool:
        if self.dead:
            return False
        poller = select.poll()
        poller.register(self._out, select.POLLIN | select.POLLHUP | select.POLLERR)
        for _fd, events in poller.poll(0):
            if events & (select.POLLHUP | select.POLLERR) and not events & select.POLLIN:
                return False
        return True

    def kill(self) -> None:
        if self.dead:
            return
        self.dead = True
        self.zygote.kill(self.key)
        if kill_uid(self.uid):  # also what outran the namespace (nothing should)
            release_uid(self.uid)
        for fd in (self._in, self._out):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.scratch, ignore_errors=True)
        _live.discard(self)
