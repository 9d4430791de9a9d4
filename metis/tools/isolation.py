"""How the sandbox is built: limits (``SandboxConfig``), the bwrap command line, the minimal
environment, and which mode runs here (``resolve_mode``). See ``sandbox.py`` for the model.
"""

from __future__ import annotations

import logging
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings
from dataclasses import dataclass, field

log = logging.getLogger("metis.tools.sandbox")
_HERE = os.path.dirname(os.path.abspath(__file__))
WORKER_PATH = os.path.join(_HERE, "_python_worker.py")
PROTOCOL_PATH = os.path.join(_HERE, "_sandbox_protocol.py")
SECCOMP_PATH = os.path.join(_HERE, "_seccomp.py")
ZYGOTE_PATH = os.path.join(_HERE, "_zygote.py")
SANDBOX_WORKER = "/opt/metis/worker.py"
SANDBOX_PROTOCOL = "/opt/metis/_sandbox_protocol.py"
SANDBOX_SECCOMP = "/opt/metis/_seccomp.py"
SANDBOX_SCRATCH = "/scratch"
SANDBOX_ZYGOTE = "/opt/metis/_zygote.py"
SANDBOX_ZYGOTE_WORKER = "/opt/metis/_python_worker.py"  # importable by that name there
SANDBOX_SCRATCHES = "/scratches"


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
    seccomp: bool = True  # install the syscall filter (_seccomp.py) before model code runs
    extra_env: dict[str, str] = field(default_factory=dict)


_mode_cache: dict[str, tuple[str, str]] = {}
_mode_lock = threading.Lock()
_warned = False


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
                  as_root: bool, zygote: bool = False) -> list[str]:
    """The full bwrap argv running ``python worker.py <args>`` with ``scratch`` as /scratch.

    ``zygote``: run the fork server instead (root only), with ``scratch`` (the dir holding every
    interpreter's scratch dir) at /scratches, CAP_SYS_ADMIN to build each interpreter's
    namespaces; see ``_zygote.py``."""
    bwrap = shutil.which("bwrap") or "bwrap"
    exe, binds = _python_binds()
    cmd = [bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
           "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    if as_root:
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        if zygote:
            cmd += ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_KILL"]
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
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/fonts", "/etc/fonts",
            # the private /tmp first: an interpreter or venv that lives under /tmp (a CI clone, say)
            # is then bound on top of it below instead of being hidden by it
            "--perms", "1777", "--size", str(cfg.tmpfs_mb << 20), "--tmpfs", "/tmp"]
    made: set[str] = {"/", "/usr", "/tmp"}
    for d in binds + [SANDBOX_WORKER]:  # world-traversable parents so the dropped uid gets through
        parts = d.strip("/").split("/")
        for i in range(1, len(parts)):
            parent = "/" + "/".join(parts[:i])
            if parent not in made:
                made.add(parent)
                cmd += ["--perms", "0755", "--dir", parent]
    for d in binds:
        cmd += ["--ro-bind", d, d]
    cmd += ["--ro-bind", WORKER_PATH, SANDBOX_WORKER, "--ro-bind", PROTOCOL_PATH, SANDBOX_PROTOCOL,
            "--ro-bind", SECCOMP_PATH, SANDBOX_SECCOMP, "--proc", "/proc", "--dev", "/dev"]
    if zygote:
        cmd += ["--ro-bind", WORKER_PATH, SANDBOX_ZYGOTE_WORKER, "--ro-bind", ZYGOTE_PATH,
                SANDBOX_ZYGOTE, "--bind", scratch, SANDBOX_SCRATCHES, "--dir", SANDBOX_SCRATCH,
                "--chdir", "/"]
    else:
        cmd += ["--bind", scratch, SANDBOX_SCRATCH, "--chdir", SANDBOX_SCRATCH]
    cmd += ["--clearenv"]
    for key, value in env.items():
        cmd += ["--setenv", key, value]
    script = SANDBOX_ZYGOTE if zygote else SANDBOX_WORKER
    return cmd + ["--", exe, "-s", "-B", script] + worker_args


def sandbox_env(home: str, cfg: SandboxConfig, tmp: str = "/tmp") -> dict[str, str]:
    env = {"HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin", "MPLBACKEND": "Agg",
           "MPLCONFIGDIR": os.path.join(tmp, ".mpl"), "XDG_CACHE_HOME": os.path.join(tmp, ".cache"),
           "TMPDIR": tmp, "LANG": "C.UTF-8",
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
    """'bwrap' or 'subprocess'. 'bwrap' that cannot run raises; 'auto' then falls back loudly
    (once) as root, and raises as non-root, where the fallback cannot isolate (docs/tools.md)."""
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
        raise SandboxError(f"tools.python.sandbox=bwrap but bubblewrap cannot run here: {why}")
    if os.geteuid() != 0:
        raise SandboxError(
            f"tools.python.sandbox=auto: bubblewrap cannot run here ({why}), and the subprocess "
            "fallback cannot isolate as non-root (no uid drop: model code could read this "
            "process's environment through /proc, signal it, reach loopback services and leave "
            "processes running). Make bubblewrap work (apt-get install bubblewrap; allow "
            "unprivileged user namespaces) or set tools.python.sandbox=subprocess to accept that.")
    if not _warned:
        _warned = True
        msg = ("!!! METIS PYTHON TOOL IS NOT SANDBOXED BY BUBBLEWRAP: it cannot run here (" + why +
               "). Falling back to a subprocess as its own uid with resource limits, a cleared "
               "env, the seccomp filter, private /tmp and network, and a /proc showing only its "
               "own processes: model code can still read world-readable host files. !!!")
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    return "subprocess"


def fallback_namespaces(scratch: str, tmpfs_mb: int) -> None:
    """The subprocess fallback as root, in the child before exec: new mount, IPC, network and UTS
    namespaces; a private ``/tmp`` and ``/dev/shm`` (tmpfs, ``tmpfs_mb`` each) with ``scratch``
    bound back at its own path; ``/proc`` remounted with ``hidepid=2`` so the sandbox uid sees
    only its own processes. Host files stay visible (this mode hides no filesystem)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(ret: int, what: str) -> None:
        if ret != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox fallback: {what}: {os.strerror(err)}")

    # CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS
    check(libc.unshare(0x00020000 | 0x08000000 | 0x40000000 | 0x04000000), "unshare")
    check(libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None), "make / private")  # REC|PRIVATE
    keep = os.open(scratch, os.O_PATH | os.O_DIRECTORY)
    opts = f"size={tmpfs_mb << 20},mode=1777".encode()
    for target in (b"/tmp", b"/dev/shm"):
        if os.path.isdir(target):
            check(libc.mount(b"tmpfs", target, b"tmpfs", 2 | 4, opts), f"tmpfs on {target!r}")
    if not os.path.isdir(scratch):  # it was under the fresh /tmp: bind it back
        os.makedirs(scratch, mode=0o755)
        check(libc.mount(f"/proc/self/fd/{keep}".encode(), scratch.encode(), None, 0x1000, None),
              "bind the scratch dir")  # MS_BIND
    os.close(keep)
    os.chdir(scratch)
    check(libc.mount(b"proc", b"/proc", b"proc", 2 | 4 | 8, b"hidepid=2"), "mount /proc")


def isolating_modes() -> list[str]:
    """The modes that isolate trajectories here: ``bwrap`` where it runs, ``subprocess`` as
    root (its own uid); for tests and benchmarks that run every mode."""
    try:
        modes = ["bwrap"] if resolve_mode("bwrap") == "bwrap" else []
    except SandboxError:
        modes = []
    return modes + (["subprocess"] if os.geteuid() == 0 else [])
