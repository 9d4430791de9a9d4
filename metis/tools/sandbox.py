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
  cleared env and PR_SET_PDEATHSIG, but no filesystem or network isolation. Teardown kills every
  process of the interpreter's uid (as root).

Deliberate simplifications: no seccomp filter, no cgroup (so memory is capped per process, not
per sandbox: ``max_processes * memory_mb`` is the worst case), scratch dirs live on the host's
temp filesystem and are capped only per file (RLIMIT_FSIZE).
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import json
import logging
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any

from metis.tools._python_worker import BLOB, HEADER, encode_frames, encode_image

log = logging.getLogger("metis.tools.sandbox")
WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_python_worker.py")
SANDBOX_WORKER = "/opt/metis/worker.py"
SANDBOX_SCRATCH = "/scratch"


class SandboxError(RuntimeError):
    """The interpreter could not be started or died / broke the protocol."""


@dataclass
class SandboxConfig:
    """Limits and isolation options of one interpreter (all PythonTool constructor args)."""

    mode: str = "auto"  # "auto" | "bwrap" | "subprocess"
    memory_mb: int = 2048  # RLIMIT_AS per process
    cpu_time_s: int = 300  # RLIMIT_CPU per process (the wall-clock timeout is separate)
    max_processes: int = 64  # RLIMIT_NPROC (per sandbox uid)
    max_file_mb: int = 64  # RLIMIT_FSIZE
    max_open_files: int = 256  # RLIMIT_NOFILE
    tmpfs_mb: int = 256  # size of the private /tmp (bwrap only)
    uid_base: int = 200_000  # sandbox uids are uid_base + [0, 65536) when the parent is root
    scratch_root: str | None = None  # where per-interpreter scratch dirs go (default: tempdir)
    max_output_chars: int = 4000
    max_images_per_call: int = 8
    min_pixels: int = 4096
    max_pixels: int = 5120 * 32 * 32
    capture_open_figures: bool = True
    max_message_mb: int = 256
    extra_env: dict[str, str] = field(default_factory=dict)


_uid_counter = itertools.count()
_mode_cache: dict[str, tuple[str, str]] = {}
_mode_lock = threading.Lock()
_warned = False
_live: weakref.WeakSet[Interpreter] = weakref.WeakSet()


def _next_uid(base: int) -> int:
    return base + ((os.getpid() % 1021) * 64 + next(_uid_counter) % 64) % 65536


def _python_binds() -> tuple[str, list[str]]:
    """(real interpreter path, host dirs to bind read-only at the same path)."""
    exe = os.path.realpath(sys.executable)
    dirs = [os.path.realpath(sys.base_prefix)]
    cands = set(site.getsitepackages()) | {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    for path in sorted(cands):
        real = os.path.realpath(path)
        if os.path.isdir(real) and not any(real.startswith(d + os.sep) or real == d for d in dirs):
            dirs.append(real)
    if not any(exe.startswith(d + os.sep) for d in dirs):
        dirs.append(os.path.dirname(exe))
    return exe, [d for d in dirs if not (d == "/usr" or d.startswith("/usr/"))]


def site_dirs() -> list[str]:
    cands = set(site.getsitepackages()) | {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    return sorted({os.path.realpath(p) for p in cands if os.path.isdir(p)})


def bwrap_command(scratch: str, worker_args: list[str], env: dict[str, str], cfg: SandboxConfig,
                  as_root: bool) -> list[str]:
    """The full bwrap argv running ``python worker.py <args>`` with ``scratch`` as /scratch."""
    bwrap = shutil.which("bwrap") or "bwrap"
    exe, binds = _python_binds()
    cmd = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if as_root:
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + top
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
    cmd += ["--perms", "0755", "--dir", "/etc",
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    made: set[str] = {"/", "/usr"}
    for d in binds + [SANDBOX_WORKER]:  # world-traversable parents so the dropped uid gets through
        parts = d.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                cmd += ["--perms", "0755", "--dir", parent]
    for d in binds:
        cmd += ["--ro-bind", d, d]
    cmd += ["--ro-bind", WORKER_PATH, SANDBOX_WORKER, "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(cfg.tmpfs_mb << 20), "--tmpfs", "/tmp",
            "--bind", scratch, SANDBOX_SCRATCH, "--chdir", SANDBOX_SCRATCH, "--clearenv"]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    return cmd + ["--", exe, "-s", "-B", SANDBOX_WORKER] + worker_args


def sandbox_env(home: str, cfg: SandboxConfig, tmp: str = "/tmp") -> dict[str, str]:
    env = {"HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "MPLBACKEND": "Agg",
           "MPLCONFIGDIR": os.path.join(tmp, ".mpl"), "TMPDIR": tmp, "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join(site_dirs()), "PYTHONNOUSERSITE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.update(cfg.extra_env)
    return env


def _probe_bwrap() -> str:
    """'' when bwrap can start our interpreter here, else why not."""
    if shutil.which("bwrap") is None:
        return "bwrap is not installed (apt-get install bubblewrap)"
    scratch = tempfile.mkdtemp(prefix="metis-probe-")
    try:
        cmd = bwrap_command(scratch, [], {}, SandboxConfig(), os.geteuid() == 0)
        cmd = cmd[: cmd.index("--") + 2] + ["-c", "import os"]
        res = subprocess.run(cmd, capture_output=True, timeout=30, env={})
        return "" if res.returncode == 0 else res.stderr.decode(errors="replace").strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_mode(requested: str) -> str:
    """'bwrap' or 'subprocess'; 'bwrap' that cannot run raises, 'auto' falls back loudly once."""
    global _warned
    if requested not in ("auto", "bwrap", "subprocess"):
        raise ValueError(f"sandbox must be auto, bwrap or subprocess, not {requested!r}")
    if requested == "subprocess":
        return "subprocess"
    with _mode_lock:
        if "bwrap" not in _mode_cache:
            _mode_cache["bwrap"] = ("", _probe_bwrap())
        why = _mode_cache["bwrap"][1]
    if not why:
        return "bwrap"
    if requested == "bwrap":
        raise SandboxError(f"sandbox='bwrap' but bubblewrap cannot run here: {why}")
    if not _warned:
        _warned = True
        msg = ("!!! METIS PYTHON TOOL IS NOT SANDBOXED: bubblewrap cannot run here (" + why +
               "). Falling back to a plain subprocess with resource limits and a cleared env: "
               "model code can read world-readable files and use the network. !!!")
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return "subprocess"


def _fallback_preexec() -> None:
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Interpreter:
    """One running worker process. Not thread-safe: one caller at a time (one trajectory)."""

    def __init__(self, cfg: SandboxConfig, mode: str) -> None:
        self.cfg, self.mode = cfg, mode
        self.as_root = os.geteuid() == 0
        self.uid = _next_uid(cfg.uid_base) if self.as_root else None
        self.scratch = tempfile.mkdtemp(prefix="metis-py-", dir=cfg.scratch_root)
        if self.uid is not None:
            os.chown(self.scratch, self.uid, self.uid)
        # bwrap (caps dropped) must chdir into it as root; no other sandbox can see it there
        os.chmod(self.scratch, 0o711 if mode == "bwrap" else 0o700)
        self._log = tempfile.NamedTemporaryFile(prefix="metis-py-log-", dir=cfg.scratch_root)
        wcfg = {k: v for k, v in asdict(cfg).items() if k not in ("extra_env", "scratch_root")}
        wcfg.update(uid=self.uid, gid=self.uid, parent_pid=None if mode == "bwrap" else os.getpid(),
                    guard=mode != "bwrap" and self.uid is not None)
        args = [json.dumps(wcfg)]
        if mode == "bwrap":
            cmd = bwrap_command(self.scratch, args, sandbox_env(SANDBOX_SCRATCH, cfg), cfg,
                                self.as_root)
            popen_env: dict[str, str] = {}
            preexec = None
        else:
            cmd = [os.path.realpath(sys.executable), "-s", "-B", WORKER_PATH] + args
            popen_env = sandbox_env(self.scratch, cfg, tmp=self.scratch)
            preexec = _fallback_preexec
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, env=popen_env, cwd=self.scratch,
                                     preexec_fn=preexec, close_fds=True)
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
        budget = [self.cfg.max_message_mb << 20]

        def read(n: int) -> bytes:
            budget[0] -= n
            if budget[0] < 0:
                raise SandboxError("reply is over the size limit")
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
        if n_blobs > 64:
            raise SandboxError("reply has too many attachments")
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
        try:
            with open(self._log.name, "rb") as fh:
                return fh.read()[-2000:].decode("utf-8", "replace").strip()
        except OSError:
            return ""

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

    def kill(self) -> None:
        """Kill the interpreter and everything it started; remove its scratch dir. Idempotent."""
        if self.dead:
            return
        self.dead = True
        try:
            self.proc.kill()  # bwrap: its pid namespace (and every process in it) goes too
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.uid is not None:  # a unique uid: also reaps anything that outran the namespace
            kill_uid(self.uid)
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


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: kill(-1) from a forked helper running as that uid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


@atexit.register
def _kill_all() -> None:
    for interp in list(_live):
        interp.kill()
