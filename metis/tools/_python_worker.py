"""The Python interpreter that runs inside the sandbox (one process per trajectory).

Standalone on purpose: run as a script, it imports only the standard library and its sibling
``_sandbox_protocol`` at module level (PIL, numpy and matplotlib are imported by ``_Runner``)
and never imports ``metis``, which is not visible inside the sandbox.

The framing (and ``smart_resize``) live in ``_sandbox_protocol.py``, bound next to this file.

Deliberate simplifications: output of background threads or processes that outlive a call may
show up in a later call's output; C-level stdio buffers are not flushed before reading fd output.
"""

from __future__ import annotations

import ast
import io
import json
import os
import sys
import traceback
from typing import Any

import _seccomp  # type: ignore  # noqa: E402
from _sandbox_protocol import (decode_image, encode_image, read_message,  # type: ignore
                                smart_resize, write_message)

_WORKER_FILE = os.path.abspath(__file__)


class _CappedWriter(io.TextIOBase):
    """A text stream keeping the first ``limit`` characters and counting the rest."""

    def __init__(self, limit: int) -> None:
        self.limit, self.parts, self.kept, self.dropped = limit, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:  # type: ignore[override]
        s = str(s)
        room = self.limit - self.kept
        if room > 0:
            self.parts.append(s[:room])
            self.kept += min(room, len(s))
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def value(self) -> str:
        return "".join(self.parts)


def _cap(text: str, dropped: int, limit: int) -> str:
    if len(text) > limit:
        dropped += len(text) - limit
        text = text[:limit]
    return text + (f"\n... [output truncated: {dropped} more characters]\n" if dropped else "")


def _set_limits(cfg: dict) -> None:
    """Resource limits (hard = soft, so model code cannot raise them)."""
    import resource

    mb = 1 << 20
    limits = {
        resource.RLIMIT_AS: cfg.get("memory_mb", 2048) * mb,
        resource.RLIMIT_CPU: cfg.get("cpu_time_s", 300),
        resource.RLIMIT_FSIZE: cfg.get("max_file_mb", 64) * mb,
        resource.RLIMIT_NPROC: cfg.get("max_processes", 64),
        resource.RLIMIT_NOFILE: cfg.get("max_open_files", 256),
        resource.RLIMIT_CORE: 0,
    }
    for which, value in limits.items():
        if (value and value > 0) or which == resource.RLIMIT_CORE:  # CORE 0: no core dumps
            hard = value + 5 if which == resource.RLIMIT_CPU else value
            try:
                resource.setrlimit(which, (value, hard))
            except (ValueError, OSError):
                pass


def _drop_privileges(cfg: dict, deathsig: bool = True) -> None:
    """Become the sandbox uid (when started as root) and re-arm the parent-death signal."""
    import ctypes

    uid, gid = cfg.get("uid"), cfg.get("gid")
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    try:  # changing credentials cleared PR_SET_PDEATHSIG (1): arm it again (SIGKILL = 9)
        if deathsig:
            ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)
    except Exception:
        pass
    if cfg.get("parent_pid") and os.getppid() != cfg["parent_pid"]:
        os._exit(3)


def _guard(cfg: dict) -> None:
    """Subprocess fallback as root: this process stays a small root guard and forks the worker.

    When the guard's parent dies (PR_SET_PDEATHSIG -> SIGTERM) or the worker exits, it kills
    every process of the sandbox uid — also the ones model code forked and detached — then exits.
    Returns in the worker child only.
    """
    import ctypes
    import signal

    uid = int(cfg["uid"])

    def reap(*_: Any) -> None:
        try:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)  # every process of uid except this one
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, reap)
    signal.signal(signal.SIGHUP, reap)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass
    if cfg.get("parent_pid") and os.getppid() != cfg["parent_pid"]:
        reap()
    guard_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        cfg["parent_pid"] = guard_pid
        return
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    while True:
        try:
            os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            break
    reap()


_PRELOAD = ("collections", "csv", "datetime", "decimal", "fractions", "functools", "heapq",
            "inspect", "itertools", "math", "random", "re", "statistics", "string", "textwrap",
            "encodings.idna", "socket", "urllib.request", "copy", "pickle", "dataclasses",
            "PIL.ImageDraw", "PIL.ImageFilter", "PIL.ImageOps", "PIL.ImageEnhance", "PIL.ImageFont")


class _Runner:
    """Executes code in one persistent namespace and collects output and images."""

    def __init__(self, cfg: dict) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from PIL import Image

        self.cfg, self.plt, self.np, self.Image = cfg, plt, np, Image
        for name in _PRELOAD:  # so that a uid that cannot read the stdlib dir still has them
            try:
                __import__(name)
            except Exception:
                pass
        plt.close(plt.figure())  # loads the backend and fonts before privileges are dropped
        self.images: list[dict] = []
        self.blobs: list[bytes] = []
        self.dropped = 0
        self.main_pid = os.getpid()
        self.limit = int(cfg.get("max_output_chars", 4000))
        plt.show = self._show_figures  # type: ignore[assignment]
        Image.Image.show = lambda img, *a, **k: self.capture(img)  # type: ignore[assignment]
        self.ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__,
                                   "display": self.display}
        self.fd_out = -1

    def open_output_file(self) -> None:
        """An anonymous file in the working dir that receives fd 1/2 output."""
        try:
            fd: int | None = os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600)
        except (AttributeError, OSError):
            fd = None
        if fd is None:
            fd = os.open(".metis_fd_output", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.unlink(".metis_fd_output")
        self.fd_out = fd

    # -- images ---------------------------------------------------------------------------
    def capture(self, img: Any) -> None:
        if len(self.images) >= int(self.cfg.get("max_images_per_call", 8)):
            self.dropped += 1
            return
        Image = self.Image
        if isinstance(img, self.np.ndarray):
            arr = img
            if arr.dtype != self.np.uint8:
                arr = self.np.clip(arr * (255 if arr.max(initial=0) <= 1.0 else 1), 0, 255)
                arr = arr.astype(self.np.uint8)
            img = Image.fromarray(arr)
        if img.mode not in ("RGB", "L"):
            try:
                img = img.convert("RGBA") if "A" in img.mode or img.mode == "P" else img
                if img.mode == "RGBA":
                    bg = Image.new("RGB", img.size, (255, 255, 255))
                    bg.paste(img, mask=img.getchannel("A"))
                    img = bg
                img = img.convert("RGB")
            except Exception:
                arr = self.np.asarray(img, dtype=self.np.float64)
                span = float(arr.max() - arr.min()) or 1.0
                img = Image.fromarray(((arr - arr.min()) / span * 255).astype(self.np.uint8))
        img = img.convert("RGB")
        h, w = smart_resize(img.height, img.width, 32, int(self.cfg.get("min_pixels", 4096)),
                            int(self.cfg.get("max_pixels", 5120 * 32 * 32)))
        if (h, w) != (img.height, img.width):
            img = img.resize((w, h), Image.BICUBIC)
        self.images.append(encode_image(img, self.blobs))

    def _capture_figure(self, fig: Any) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        buf.seek(0)
        self.capture(self.Image.open(buf))

    def _show_figures(self, *args: Any, **kwargs: Any) -> None:
        for num in self.plt.get_fignums():
            self._capture_figure(self.plt.figure(num))
        self.plt.close("all")

    def display(self, *objs: Any, **kwargs: Any) -> None:
        """Show images (PIL, figures, uint8 arrays) as output images; print anything else."""
        from matplotlib.figure import Figure

        for obj in objs:
            if isinstance(obj, self.Image.Image):
                self.capture(obj)
            elif isinstance(obj, Figure):
                self._capture_figure(obj)
                self.plt.close(obj)
            elif (isinstance(obj, self.np.ndarray) and obj.ndim in (2, 3)
                  and (obj.ndim == 2 or obj.shape[2] in (3, 4)) and obj.size > 0):
                self.capture(obj)
            else:
                print(repr(obj))

    # -- execution --------------------------------------------------------------------------
    def load_images(self, encoded: list[dict], blobs: list[bytes]) -> None:
        for i, data in enumerate(encoded, start=1):
            self.ns[f"image_{i}"] = decode_image(data, blobs)

    def _read_fd_output(self) -> tuple[str, int]:
        size = os.lseek(self.fd_out, 0, os.SEEK_END)
        os.lseek(self.fd_out, 0, os.SEEK_SET)
        data = os.read(self.fd_out, min(size, self.limit * 4)) if size else b""
        os.ftruncate(self.fd_out, 0)
        os.lseek(self.fd_out, 0, os.SEEK_SET)
        text = data.decode("utf-8", "replace")
        return text, max(0, size - len(data))

    def run(self, code: str) -> dict:
        self.images, self.blobs, self.dropped = [], [], 0
        out, err = _CappedWriter(self.limit), _CappedWriter(self.limit)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        error = None
        try:
            tree = ast.parse(code, "<code>", "exec")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, "<code>", "exec"), self.ns)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<code>", "eval"), self.ns)
                if value is not None:
                    self.display(value)
            if self.cfg.get("capture_open_figures", True) and self.plt.get_fignums():
                self._show_figures()
        except BaseException as exc:  # noqa: BLE001 - model code may raise anything
            error = self._format_exception(exc)
        finally:
            if os.getpid() != self.main_pid:  # a fork of model code must never answer
                os._exit(0)
            sys.stdout, sys.stderr = saved
        fd_text, fd_dropped = self._read_fd_output()
        stdout = _cap(out.value() + fd_text, out.dropped + fd_dropped, self.limit)
        stderr = _cap(err.value(), err.dropped, self.limit)
        if error is not None:
            self.images, self.blobs, self.dropped = [], [], 0
            self.plt.close("all")
        return {"ok": error is None, "stdout": stdout, "stderr": stderr,
                "error": _cap(error, 0, self.limit) if error else None,
                "images": self.images, "dropped_images": self.dropped}

    @staticmethod
    def _format_exception(exc: BaseException) -> str:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == _WORKER_FILE:
            tb = tb.tb_next
        try:
            return "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:  # noqa: BLE001 - e.g. MemoryError while formatting
            return f"{type(exc).__name__}\n"


def _signal_others(cfg: dict, sig: int) -> None:
    """kill(-1, sig): every other process this uid may signal — in its own pid namespace or as
    its own uid, exactly the sandbox's processes (``cfg["freeze"]`` says so)."""
    if cfg.get("freeze"):
        try:
            os.kill(-1, sig)
        except OSError:
            pass  # ESRCH: there are none


def confine(cfg: dict, deathsig: bool = True) -> None:
    """Limits, the uid drop and the seccomp filter: what every sandbox process gets before any
    model code runs (the fork server's namespace init too)."""
    _set_limits(cfg)
    try:  # under memory pressure the kernel kills sandboxes first, never the trainer
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:
        pass
    _drop_privileges(cfg, deathsig)
    if cfg.get("seccomp", True):
        try:
            _seccomp.install()  # after the drop (setresuid), before any model code
        except OSError as exc:
            sys.stderr.write(f"cannot install the seccomp filter: {exc}\n")
            os._exit(4)


def preload(cfg: dict) -> _Runner:
    """Import numpy, PIL, matplotlib (+ backend and fonts) and the preloaded stdlib modules."""
    return _Runner(cfg)


def main() -> None:
    cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    if cfg.get("guard"):
        _guard(cfg)
    serve(cfg)


def serve(cfg: dict, runner: _Runner | None = None) -> None:
    """Speak the protocol on fds 0/1 until the parent closes them; never returns. ``runner``:
    one made by ``preload`` before a fork (nothing ran in it yet), to skip the imports."""
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    _set_limits(cfg)
    if runner is None:
        runner = _Runner(cfg)  # imports happen before the drop: the uid may not reach the stdlib
    else:
        runner.cfg, runner.main_pid = cfg, os.getpid()
        runner.limit = int(cfg.get("max_output_chars", 4000))
    confine(cfg)
    runner.open_output_file()
    os.dup2(runner.fd_out, 1)
    os.dup2(runner.fd_out, 2)
    sys.stdin = open(os.devnull)  # noqa: SIM115
    write_message(proto_out, {"op": "ready", "pid": os.getpid()})
    while True:
        received = read_message(proto_in)
        if received is None:
            os._exit(0)
        msg, blobs = received
        op = msg.get("op")
        out_blobs: list[bytes] = []
        try:
            if op == "exec":
                _signal_others(cfg, 18)  # SIGCONT: what model code left running goes on
                reply = runner.run(str(msg.get("code", "")))
                out_blobs = runner.blobs
                _signal_others(cfg, 19)  # SIGSTOP: no CPU between calls
            elif op == "init":
                runner.load_images(list(msg.get("images", [])), blobs)
                reply = {"ok": True}
            else:
                reply = {"ok": True, "op": "pong"}
        except BaseException as exc:  # noqa: BLE001
            reply = {"ok": False, "stdout": "", "stderr": "", "images": [],
                     "error": f"internal worker error: {type(exc).__name__}: {exc}"}
        try:
            write_message(proto_out, reply, out_blobs)
        except MemoryError:
            write_message(proto_out, {"ok": False, "stdout": "", "stderr": "", "images": [],
                                       "error": "MemoryError while sending the result\n"})
        runner.blobs = []


if __name__ == "__main__":
    main()
