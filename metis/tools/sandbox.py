"""Start and talk to one sandboxed Python interpreter (``_python_worker.py``).

Isolation model (see docs/tools.md):

* ``bwrap`` mode: bubblewrap with new pid, net, ipc, uts (and cgroup) namespaces, a fresh root
  holding only ``/usr`` (+ /bin, /lib* links), the Python prefix and its site-packages read-only,
  a private ``/tmp`` tmpfs, ``/proc``, a minimal ``/dev`` and one writable scratch dir per
  interpreter as the working dir. ``--die-with-parent`` and ``--new-session``; a cleared env.
* When the parent runs as root, no user namespace is used: the worker starts as root with only
  CAP_SETUID/CAP_SETGID and drops to a fresh unprivileged uid of its own before any model code
  runs, so that RLIMIT_NPROC (which never applies to uid 0) contains fork bombs. As non-root, an
  unprivileged user namespace is used and the limits apply inside it.
* ``subprocess`` mode (fallback): the same worker with the same rlimits, uid drop (as root), a
  cleared env and PR_SET_PDEATHSIG; as root also private mount/ipc/net/uts namespaces, a private
  /tmp and /dev/shm and a hidepid /proc (``isolation.fallback_namespaces``), but the host
  filesystem stays readable. Teardown kills every process of the interpreter's uid (as root).
* Every mode: the seccomp filter of ``_seccomp.py`` and no_new_privs before model code runs;
  processes other than the worker are stopped between calls (where its own pid namespace or
  uid tells them apart); replies are capped to what a genuine one can hold (``reply_budget``).
  With ``fork_server`` (bwrap as root) interpreters are forked by ``zygote.py`` instead.

Deliberate simplifications: no cgroup (memory per sandbox is a watchdog in ``PythonTool``, as
root); scratch dirs live on the host's temp filesystem and are capped only per file
(RLIMIT_FSIZE).
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import asdict
from typing import Any

from metis.tools._sandbox_protocol import BLOB, HEADER, encode_frames, encode_image
from metis.tools.isolation import (SANDBOX_SCRATCH, WORKER_PATH, SandboxConfig, SandboxError,
                                   bwrap_command, fallback_namespaces, resolve_mode,
                                   sandbox_env)
from metis.tools.uid_lease import lease_uid, release_uid

__all__ = ["Interpreter", "SandboxConfig", "SandboxError", "kill_uid", "resolve_mode",
           "sweep_stale_scratch"]

log = logging.getLogger("metis.tools.sandbox")
_live: weakref.WeakSet[Interpreter] = weakref.WeakSet()


SCRATCH_PREFIX = "metis-py-"
_swept: set[str] = set()


def sweep_stale_scratch(root: str | None = None) -> int:
    """Remove scratch dirs left by processes that died without cleaning up (SIGKILL); once per
    root and process. Returns how many were removed."""
    root = root or tempfile.gettempdir()
    if root in _swept:
        return 0
    _swept.add(root)
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        owner = name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if not name.startswith(SCRATCH_PREFIX) or not owner.isdigit():
            continue
        try:
            os.kill(int(owner), 0)
            continue  # the owner is alive (or the pid was reused: leave it)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed += 1
        except OSError:
            continue
    return removed


def _fallback_preexec(scratch: str | None = None, tmpfs_mb: int = 0) -> None:
    os.setsid()
    if scratch is not None:
        fallback_namespaces(scratch, tmpfs_mb)
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def file_tail(fh: Any, n: int = 2000) -> str:
    """The last ``n`` bytes of an open file as text ('' when it is closed or unreadable)."""
    try:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        return os.pread(fd, n, max(0, size - n)).decode("utf-8", "replace").strip()
    except (OSError, ValueError):
        return ""


def reply_budget(cfg: SandboxConfig, images: bool = True) -> int:
    """Most bytes a genuine reply can take: stdout, stderr and the error, each at most
    ``max_output_chars`` (+ a note) at <= 6 bytes a character in JSON, and at most
    ``max_images_per_call`` images of <= ``max_pixels`` RGB pixels. Model code that writes its
    own frames to the protocol pipe cannot make the parent read more than this."""
    text = 3 * 6 * (cfg.max_output_chars + 100) + 4096
    return text + (cfg.max_images_per_call * (3 * cfg.max_pixels + 8) if images else 0)


class Interpreter:
    """One running worker process. Not thread-safe: one caller at a time (one trajectory)."""

    def __init__(self, cfg: SandboxConfig, mode: str) -> None:
        self.cfg, self.mode = cfg, mode
        self.as_root = os.geteuid() == 0
        self.uid = lease_uid(cfg.uid_base) if self.as_root else None
        try:
            self.scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=cfg.scratch_root)
        except BaseException:
            if self.uid is not None:
                release_uid(self.uid)
            raise
        if self.uid is not None:
            os.chown(self.scratch, self.uid, self.uid)
        # bwrap (caps dropped) must chdir into it as root; no other sandbox can see it there
        os.chmod(self.scratch, 0o711 if mode == "bwrap" else 0o700)
        self._log = tempfile.TemporaryFile(dir=cfg.scratch_root)  # anonymous: never left behind
        wcfg = {k: v for k, v in asdict(cfg).items() if k not in ("extra_env", "scratch_root")}
        wcfg.update(uid=self.uid, gid=self.uid, parent_pid=None if mode == "bwrap" else os.getpid(),
                    guard=mode != "bwrap" and self.uid is not None,
                    freeze=mode == "bwrap" or self.uid is not None)
        args = [json.dumps(wcfg)]
        if mode == "bwrap":
            cmd = bwrap_command(self.scratch, args, sandbox_env(SANDBOX_SCRATCH, cfg), cfg,
                                self.as_root)
            popen_env: dict[str, str] = {}
            preexec = None
        else:
            cmd = [os.path.realpath(sys.executable), "-s", "-B", WORKER_PATH] + args
            popen_env = sandbox_env(self.scratch, cfg, tmp=self.scratch)
            preexec = (functools.partial(_fallback_preexec, self.scratch, cfg.tmpfs_mb)
                       if self.as_root else _fallback_preexec)
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._log, env=popen_env, cwd=self.scratch,
                                         preexec_fn=preexec, close_fds=True)
        except BaseException:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self._log.close()
            if self.uid is not None:
                release_uid(self.uid)
            raise
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        for fd in (self._in, self._out):  # bigger pipes: fewer wake-ups for image transfers
            try:
                fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ
            except OSError:
                pass
        self.ready = False
        self.dead = False
        self._ready_lock = threading.Lock()
        self.created = time.monotonic()
        _live.add(self)

    # -- framing with deadlines ---------------------------------------------------------------
    def _recv(self, deadline: float) -> tuple[dict, list[bytes]]:
        cfg = self.cfg
        budget = [min(cfg.max_message_mb << 20, reply_budget(cfg))]

        def read(n: int) -> bytes:
            budget[0] -= n
            if budget[0] < 0:
                raise SandboxError("reply is over the size limit (a forged frame?)")
            buf = bytearray(n)
            view, got = memoryview(buf), 0
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._out], [], [], left)[0]:
                    raise TimeoutError
                k = os.readv(self._out, [view[got:]])
                if not k:
                    raise SandboxError("the interpreter exited")
                got += k
            return bytes(buf)

        size, n_blobs = HEADER.unpack(read(HEADER.size))
        if n_blobs > cfg.max_images_per_call or size > reply_budget(cfg, images=False):
            raise SandboxError("reply is over the size limit (a forged frame?)")
        try:
            msg = json.loads(read(size))
        except ValueError as exc:
            raise SandboxError(f"malformed reply: {exc}") from None
        if not isinstance(msg, dict):
            raise SandboxError("malformed reply")
        blobs = [read(BLOB.unpack(read(BLOB.size))[0]) for _ in range(n_blobs)]
        return msg, blobs

    def _send(self, obj: Any, blobs: list[bytes], deadline: float) -> None:
        for frame in encode_frames(obj, blobs):
            data = memoryview(frame)
            while data:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([], [self._in], [], left)[1]:
                    raise TimeoutError
                try:
                    data = data[os.write(self._in, data[: 1 << 20]):]
                except BlockingIOError:
                    continue
                except OSError as exc:
                    raise SandboxError(f"the interpreter exited ({exc})") from None

    def wait_ready(self, timeout: float) -> None:
        """Wait for the worker's "ready" message (imports done). SandboxError if it never comes."""
        with self._ready_lock:
            self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        if self.ready:
            return
        if self.dead:
            raise SandboxError("the interpreter was killed")
        try:
            msg, _ = self._recv(time.monotonic() + timeout)
        except TimeoutError:
            self.kill()
            raise SandboxError(f"the interpreter did not start within {timeout:.0f} s") from None
        except SandboxError as exc:
            self.kill()
            raise SandboxError(f"{exc}: {self.startup_log()}") from None
        if msg.get("op") != "ready":
            self.kill()
            raise SandboxError(f"unexpected first message {str(msg)[:200]}")
        self.ready = True

    def startup_log(self) -> str:
        """The tail of what the process wrote to stderr before the worker redirected it."""
        return file_tail(self._log)

    def request(self, msg: dict, timeout: float,
                blobs: list[bytes] | None = None) -> tuple[dict, list[bytes]]:
        """Send one request, wait for its reply; TimeoutError or SandboxError kill the process."""
        deadline = time.monotonic() + timeout
        try:
            self._send(msg, blobs or [], deadline)
            return self._recv(deadline)
        except (TimeoutError, SandboxError):
            self.kill()
            raise

    def send_images(self, images: list[Any], timeout: float) -> None:
        """Preload PIL images as image_1, image_2, ... in the interpreter."""
        blobs: list[bytes] = []
        encoded = [encode_image(im, blobs) for im in images]
        reply, _ = self.request({"op": "init", "images": encoded}, timeout, blobs)
        if not reply.get("ok"):
            raise SandboxError(str(reply.get("error")))

    @property
    def alive(self) -> bool:
        return not self.dead and self.proc.poll() is None

    def stop_processes(self) -> None:
        """SIGKILL the sandbox's processes but leave the pipes to the caller (safe from any
        thread: a call in flight then reads EOF and cleans up with ``kill``)."""
        if self.uid is not None:
            kill_uid(self.uid)

    def kill(self) -> None:
        """Kill the interpreter and everything it started; remove its scratch dir. Idempotent."""
        if self.dead:
            return
        self.dead = True
        if self.mode == "bwrap" and self.proc.poll() is None:
            _kill_bwrap_children(self.proc.pid)
        try:
            self.proc.kill()  # bwrap: its pid namespace (and every process in it) goes too
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.uid is not None and kill_uid(self.uid):  # also what outran the namespace
            release_uid(self.uid)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        shutil.rmtree(self.scratch, ignore_errors=True)
        try:
            self._log.close()
        except OSError:
            pass
        _live.discard(self)


def _kill_bwrap_children(pid: int) -> None:
    """SIGKILL the sandbox's init before bwrap itself.

    bwrap's pid-namespace init only arms PR_SET_PDEATHSIG after a set-up handshake with the
    outer bwrap (an eventfd): killing the outer one inside that window leaves the init blocked
    forever (seen here). So: stop the outer process (no further clone), kill its children, then
    it.
    """
    try:
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            if state in ("T", "t", "Z", "X"):
                break
            time.sleep(0.001)
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except (OSError, ValueError, IndexError):
        return
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except OSError:
            pass


def kill_uid(uid: int, tries: int = 20) -> bool:
    """SIGKILL every process of ``uid``: kill(-1) from a forked helper running as that uid.

    A failed ``fork`` (EAGAIN/ENOMEM under pressure) is retried with back-off; False when it
    never succeeded: the caller must then not hand the uid to another sandbox."""
    for attempt in range(tries):
        try:
            pid = os.fork()
            break
        except OSError as exc:
            log.warning("kill_uid(%d): fork failed (%s); retrying", uid, exc)
            time.sleep(min(1.0, 0.01 * 2 ** attempt))
    else:
        log.error("kill_uid(%d): could not fork a helper; the uid stays leased", uid)
        return False
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return True


@atexit.register
def _kill_all() -> None:
    for interp in list(_live):
        interp.kill()
