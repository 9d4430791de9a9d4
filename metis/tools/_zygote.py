"""The fork server (zygote): one process per PythonTool that has imported numpy, PIL and
matplotlib once, inside one bwrap sandbox, and forks each trajectory's interpreter from there.

Standalone like ``_python_worker.py`` (it runs inside the sandbox, where ``metis`` is not
visible). Started as root-in-bwrap with CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID and CAP_KILL only; it runs
no model code. Each ``spawn`` request carries the worker config and two pipe ends (SCM_RIGHTS on
the control socket, fd 0). For it the zygote forks a child that

1. enters new mount, pid, network, IPC and UTS namespaces (``unshare``),
2. binds its own scratch dir (``/scratches/<name>``) at ``/scratch`` and covers
   ``/scratches`` (every other interpreter's dir) with an empty read-only tmpfs, mounts a fresh tmpfs on
   ``/tmp`` and sets the hostname,
3. forks the namespace's init (pid 1), reports its pid and exits; the init mounts a ``/proc``
   of the new pid namespace, forks the worker (pid 2) and reaps orphans until the worker exits,
   which ends the namespace and every process in it.

Both the init and the worker then drop to the interpreter's uid, set its rlimits, set
no_new_privs and install the seccomp filter (``_python_worker.main``), exactly like an
interpreter started by its own bwrap: the same namespaces, uid, limits and filter, at the cost
of two forks instead of a Python start-up and the imports.

Control protocol (one JSON line per message): ``{"op": "spawn", "id": str, "name": str,
"cfg": {...}}`` + fds [to_worker_read, from_worker_write] -> ``{"id", "init": pid}`` or
``{"id", "error"}``; ``{"op": "kill", "id": str}`` (no reply).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys

import _python_worker as worker  # type: ignore

NEW_NS = 0x00020000 | 0x20000000 | 0x40000000 | 0x08000000 | 0x04000000  # NS PID NET IPC UTS
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
SCRATCHES = "/scratches"
_libc = ctypes.CDLL(None, use_errno=True)
_RUNNER = None  # the preloaded worker runner every interpreter starts from
_WAKE: list[int] = []  # the SIGCHLD wake-up pipe (closed in every fork)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _enter_namespaces(name: str, cfg: dict) -> None:
    """In the forked child: private namespaces and mounts for one interpreter (step 1-2)."""
    _check(_libc.unshare(NEW_NS), "unshare")
    _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"bad scratch name {name!r}")
    src = os.path.join(SCRATCHES, name).encode()
    _check(_libc.mount(src, b"/scratch", None, MS_BIND, None), "bind /scratch")
    # cover every other interpreter's dir with an empty read-only tmpfs (umount2(MNT_DETACH)
    # would wait for an RCU grace period: up to ~30 ms measured); nothing in the sandbox may
    # unmount it (no capabilities; umount2 is denied by the seccomp filter)
    _check(_libc.mount(b"tmpfs", SCRATCHES.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC
                       | MS_RDONLY, b"size=4k,mode=0555"), "cover /scratches")
    opts = f"size={int(cfg.get('tmpfs_mb', 256)) << 20},mode=1777".encode()
    _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, opts), "tmpfs on /tmp")
    host = b"sandbox"
    _check(_libc.sethostname(host, len(host)), "sethostname")
    os.chdir("/scratch")


def _init(cfg: dict) -> None:
    """pid 1 of the interpreter's pid namespace: /proc, the worker (pid 2), then reap."""
    _check(_libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
           "mount /proc")
    pid = os.fork()
    if pid == 0:
        worker.serve(cfg, _RUNNER)  # never returns
        os._exit(0)
    os.close(0)
    os.close(1)
    # same uid, limits, no_new_privs and seccomp filter as the worker; no parent-death signal:
    # the short-lived forker above exits now (the init dies with the zygote's pid namespace)
    worker.confine(cfg, deathsig=False)
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if done == pid:
            os._exit(0)  # the namespace ends with its init: everything left in it is killed


def _spawn(name: str, cfg: dict, fds: list[int]) -> int:
    """Fork one interpreter; returns the pid of its namespace init (as this zygote sees it)."""
    report_r, report_w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 1
        try:
            os.close(report_r)
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in _WAKE:
                os.close(fd)
            os.dup2(fds[0], 0)
            os.dup2(fds[1], 1)
            _enter_namespaces(name, cfg)
            init = os.fork()
            if init == 0:
                os.close(report_w)
                _init(cfg)
            os.write(report_w, str(init).encode())
            code = 0
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"zygote: cannot start an interpreter: {exc}\n".encode())
        os._exit(code)
    os.close(report_w)
    data = b""
    while True:
        part = os.read(report_r, 64)
        if not part:
            break
        data += part
    os.close(report_r)
    os.waitpid(child, 0)
    if not data:
        raise OSError("the interpreter's namespace could not be set up (see the zygote log)")
    return int(data)


def main() -> None:
    cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    ctl = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    _libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: the inits are re-parented here
    try:  # the kernel's OOM killer picks an interpreter (1000) first, then this, never the trainer
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("900")
    except OSError:
        pass
    global _RUNNER
    _RUNNER = worker.preload(cfg)  # numpy, PIL, matplotlib, fonts: once, before any fork
    gc.freeze()  # the forks then share these objects' pages instead of copying them on GC
    inits: dict[str, int] = {}

    def reap() -> None:  # only here, so a pid in ``inits`` is never reused under our feet
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for key, value in list(inits.items()):
                if value == pid:
                    del inits[key]

    # SIGCHLD only wakes the loop (set_wakeup_fd): reaping happens here and nowhere else
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _WAKE.extend((wake_r, wake_w))
    buf = b""
    pending: list[int] = []
    ctl.sendall(b'{"op": "ready"}\n')
    while True:
        ready = select.select([ctl, wake_r], [], [])[0]
        if wake_r in ready:
            while True:
                try:
                    if not os.read(wake_r, 4096):
                        break
                except BlockingIOError:
                    break
            reap()  # a dead interpreter's init is reaped at once (no zombie of its uid stays)
        if ctl not in ready:
            continue
        data, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 16, 8)
        pending += fds
        if not data:
            os._exit(0)  # the parent is gone: bwrap --die-with-parent ends the rest
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            if msg.get("op") == "kill":
                pid = inits.pop(str(msg.get("id")), None)
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)  # pid 1 of the namespace: all of it goes
                    except OSError:
                        pass  # already gone (a zombie not reaped yet is fine too)
                continue
            fds, pending = pending[:2], pending[2:]
            try:
                pid = _spawn(str(msg["name"]), dict(msg["cfg"]), fds)
                inits[str(msg["id"])] = pid
                reply = {"id": msg["id"], "init": pid}
            except Exception as exc:  # noqa: BLE001
                reply = {"id": msg["id"], "error": f"{type(exc).__name__}: {exc}"}
            finally:
                for fd in fds:
                    os.close(fd)
            ctl.sendall(json.dumps(reply).encode() + b"\n")


if __name__ == "__main__":
    main()
