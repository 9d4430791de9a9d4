"""The ``python`` tool: a persistent sandboxed interpreter per trajectory.

Each trajectory gets its own interpreter (state kept across its turns; the input images preloaded
as ``image_1``, ``image_2``, ...; PIL, numpy and matplotlib (Agg) importable). Images shown with
``plt.show()``, ``display(x)``, ``img.show()``, a PIL image / figure as the last expression, or
figures left open at the end come back as observation images, resized to multiples of 32 with the
pixel count in [min_pixels, max_pixels].

Deliberate simplifications:
* Interpreters are taken from the warm pool at a trajectory's *first* python call (the input
  images are sent then), not at ``start`` — a batch of 2,048 rollouts of which few call python
  must not hold 2,048 processes. ``eager_start=True`` takes one at ``start`` instead.
* At most ``max_live_interpreters`` stay attached to trajectories; beyond that the least recently
  used idle one is stopped and its trajectory's next call starts fresh (it is told state is lost).
* A timeout or a crash stops the interpreter; the next call starts a fresh one (state lost).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from metis.tools.base import Observation, Tool, error_observation, escape_text, fit_image
from metis.tools.pool import InterpreterPool
from metis.tools._sandbox_protocol import decode_image
from metis.tools.sandbox import (Interpreter, SandboxConfig, SandboxError, resolve_mode,
                                 sweep_stale_scratch)
from metis.tools.uid_lease import check_uid_range
from metis.tools.watchdog import sandbox_memory_usage
from metis.tools.zygote import ForkedInterpreter, Zygote

log = logging.getLogger("metis.tools.python")
_instances: weakref.WeakSet[PythonTool] = weakref.WeakSet()

HEADER = "Code execution result:\n"
STATE_LOST = ("The interpreter was restarted and its state is lost: variables and imports from "
              "earlier calls are gone; the input images are loaded again as image_1, image_2, ...")


@dataclass
class _Traj:
    images: list[Image.Image]
    interp: Interpreter | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = 0.0
    note: str = ""  # told to the model on its next call (e.g. state lost by eviction)


class PythonTool(Tool):
    """Run Python code in the trajectory's persistent sandboxed interpreter."""

    name = "python"
    description = ("Execute Python code in a persistent sandboxed interpreter. The input images are "
                   "preloaded as PIL images image_1, image_2, ...; PIL, numpy and matplotlib are "
                   "available. Printed output is returned; show images with display(img), "
                   "plt.show() or by ending the code with an image.")
    parameters = {"type": "object",
                  "properties": {"code": {"type": "string", "description": "Python code to run"}},
                  "required": ["code"]}

    def __init__(self, timeout_s: float = 20.0, sandbox: str = "auto", pool_size: int = 4,
                 eager_start: bool = False, max_live_interpreters: int = 256,
                 startup_timeout_s: float = 60.0, memory_mb: int = 2048, cpu_time_s: int = 300,
                 max_processes: int = 64, max_file_mb: int = 64, tmpfs_mb: int = 256,
                 max_output_chars: int = 4000, max_images_per_call: int = 8,
                 min_pixels: int = 4096, max_pixels: int = 5120 * 32 * 32,
                 capture_open_figures: bool = True, scratch_root: str | None = None,
                 fork_server: bool = True, uid_base: int = 200_000,
                 sandbox_memory_mb: int = 2048) -> None:
        self.timeout_s = float(timeout_s)
        self.eager_start = eager_start
        self.max_live = max(1, int(max_live_interpreters))
        self.config = SandboxConfig(
            mode=sandbox, memory_mb=memory_mb, cpu_time_s=cpu_time_s, max_processes=max_processes,
            max_file_mb=max_file_mb, tmpfs_mb=tmpfs_mb, scratch_root=scratch_root,
            max_output_chars=max_output_chars, max_images_per_call=max_images_per_call,
            min_pixels=min_pixels, max_pixels=max_pixels,
            capture_open_figures=capture_open_figures, uid_base=uid_base)
        self.mode = resolve_mode(sandbox)
        if os.geteuid() == 0:
            check_uid_range(self.config.uid_base)
        sweep_stale_scratch(scratch_root)
        # bwrap as root: fork each interpreter from one pre-imported zygote (zygote.py)
        self.zygote = (Zygote(self.config, startup_timeout_s)
                       if fork_server and self.mode == "bwrap" and os.geteuid() == 0 else None)
        self.pool = InterpreterPool(self._new_interpreter, pool_size, startup_timeout_s)
        self._trajs: dict[str, _Traj] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._reap_queue: queue.SimpleQueue[Interpreter | None] = queue.SimpleQueue()
        self._reaper = threading.Thread(target=self._reap_loop, name="metis-python-reaper",
                                        daemon=True)
        self._reaper.start()
        self.sandbox_memory_mb = int(sandbox_memory_mb)
        self._stop_watch = threading.Event()
        if os.geteuid() == 0 and self.sandbox_memory_mb > 0:  # sandboxes are told apart by uid
            threading.Thread(target=self._watch_loop, name="metis-python-memory",
                             daemon=True).start()
        _instances.add(self)

    def _watch_loop(self, interval_s: float = 0.25) -> None:
        """Kill a sandbox whose processes + /tmp hold more than ``sandbox_memory_mb``."""
        budget = self.sandbox_memory_mb << 20
        while not self._stop_watch.wait(interval_s):
            with self._lock:
                interps = [t.interp for t in self._trajs.values()
                           if t.interp is not None and not t.interp.dead and t.interp.uid is not None]
            if not interps:
                continue
            try:
                usage = sandbox_memory_usage({i.uid for i in interps}, {i.uid: True for i in interps})
                for interp in interps:
                    used = usage.get(interp.uid, 0)
                    if used > budget and not interp.dead:
                        interp.over_budget = (
                            f"the sandbox held {used >> 20} MiB (its processes + /tmp), over "
                            f"tools.python.sandbox_memory_mb={self.sandbox_memory_mb}, and was "
                            "stopped")
                        interp.stop_processes()  # the call in flight sees EOF; fds stay its own
            except Exception as exc:  # noqa: BLE001 - the watchdog must keep watching
                log.error("python tool: memory watchdog: %s", exc)

    def _new_interpreter(self) -> Interpreter:
        if self.zygote is not None:
            return ForkedInterpreter(self.config, self.zygote)
        return Interpreter(self.config, self.mode)

    def _reap_loop(self) -> None:
        """Stops finished interpreters off the caller's path (end() returns at once)."""
        while True:
            interp = self._reap_queue.get()
            if interp is None:
                return
            try:  # this thread must outlive any one failure (a failed fork, say)
                interp.kill()
            except Exception as exc:  # noqa: BLE001
                log.error("python tool: stopping an interpreter failed: %s", exc)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, traj_id: str, images: list[Image.Image],
              meta: Mapping[str, Any] | None = None) -> None:
        old = None
        with self._lock:
            old = self._trajs.pop(traj_id, None)
            traj = self._trajs[traj_id] = _Traj(images=list(images), last_used=time.monotonic())
        if old is not None and old.interp is not None:
            self._reap_queue.put(old.interp)
        if self.eager_start:
            with traj.lock:
                try:
                    self._attach(traj)
                except SandboxError as exc:
                    log.error("python tool: could not start an interpreter: %s", exc)

    def end(self, traj_id: str) -> None:
        with self._lock:
            traj = self._trajs.pop(traj_id, None)
        if traj is not None and traj.interp is not None:
            self._reap_queue.put(traj.interp)

    def close(self) -> None:
        self._stop_watch.set()
        with self._lock:
            self._closed = True
            trajs, self._trajs = list(self._trajs.values()), {}
        for traj in trajs:
            if traj.interp is not None:
                traj.interp.kill()
        self._reap_queue.put(None)
        if threading.current_thread() is not self._reaper:
            self._reaper.join(timeout=30)
        self.pool.close()
        if self.zygote is not None:
            self.zygote.close()

    # -- calls ----------------------------------------------------------------------------------
    def call(self, traj_id: str, arguments: dict) -> Observation:
        t0 = time.monotonic()
        code = arguments.get("code") if isinstance(arguments, dict) else None
        if not isinstance(code, str):
            return error_observation("parse_error", 'python needs {"code": "<python source>"}')
        with self._lock:
            if self._closed:
                return error_observation("execution_error", "The python tool is closed.")
            traj = self._trajs.get(traj_id)
            if traj is None:  # lenient: a call without start() gets an image-less trajectory
                traj = self._trajs[traj_id] = _Traj(images=[])
        with traj.lock:
            traj.last_used = time.monotonic()
            note = ""
            try:
                self._attach(traj)
                note, traj.note = traj.note, ""
                assert traj.interp is not None
                reply, blobs = traj.interp.request({"op": "exec", "code": code}, self.timeout_s)
            except TimeoutError:
                traj.interp = None
                return error_observation(
                    "timeout", f"{HEADER}{note}TimeoutError: the code ran longer than "
                    f"{self.timeout_s:g} s and was stopped. {STATE_LOST}\n", time.monotonic() - t0)
            except SandboxError as exc:
                why = getattr(traj.interp, "over_budget", "") or str(exc)
                traj.interp, traj.note = None, ""
                return error_observation(
                    "execution_error", f"{HEADER}{note}The interpreter stopped ({why}). "
                    f"{STATE_LOST}\n", time.monotonic() - t0)
            finally:
                traj.last_used = time.monotonic()
        return self._observation(reply, blobs, note, time.monotonic() - t0)

    def _attach(self, traj: _Traj) -> None:
        """Give ``traj`` a live interpreter holding its images (caller holds traj.lock)."""
        if traj.interp is not None and traj.interp.alive:
            return
        if traj.interp is not None:
            traj.interp.kill()
            traj.interp = None
            traj.note = traj.note or STATE_LOST + "\n"
        self._make_room()
        interp = self.pool.acquire()
        try:
            if traj.images:
                interp.send_images(traj.images, self.timeout_s + 30)
        except (TimeoutError, SandboxError) as exc:
            interp.kill()
            raise SandboxError(f"could not load the input images: {exc}") from None
        traj.interp = interp

    def _make_room(self) -> None:
        with self._lock:
            attached = [t for t in self._trajs.values() if t.interp is not None]
        if len(attached) < self.max_live:
            return
        for victim in sorted(attached, key=lambda t: t.last_used):
            if victim.lock.acquire(blocking=False):
                try:
                    if victim.interp is not None:
                        victim.interp.kill()
                        victim.interp = None
                        victim.note = STATE_LOST + "\n"
                        return
                finally:
                    victim.lock.release()

    def _observation(self, reply: dict, blobs: list[bytes], note: str,
                     latency: float) -> Observation:
        stdout = str(reply.get("stdout") or "")
        stderr = str(reply.get("stderr") or "")
        error = reply.get("error")
        text = HEADER + note + escape_text(stdout + stderr + (str(error) if error else ""))
        if error or not reply.get("ok"):
            return Observation(text=text, images=[], error="execution_error", latency_s=latency)
        images = []
        for data in list(reply.get("images") or [])[: self.config.max_images_per_call]:
            img = self._decode(data, blobs)
            if img is not None:
                images.append(img)
        dropped = int(reply.get("dropped_images") or 0) + len(reply.get("images") or []) - len(images)
        if dropped > 0:
            text += f"\n[{dropped} more image(s) not shown: at most " \
                    f"{self.config.max_images_per_call} per call]"
        if images:
            text += "\nImages:\n" + "\n".join("<image>" for _ in images)
        return Observation(text=text, images=images, error=None, latency_s=latency)

    def _decode(self, data: Any, blobs: list[bytes]) -> Image.Image | None:
        """Check and decode one image from the sandbox (wrong sizes are dropped, not trusted)."""
        try:
            img = decode_image(data, blobs, max_pixels=4 * self.config.max_pixels)
            return fit_image(img, self.config.min_pixels, self.config.max_pixels)
        except Exception:  # noqa: BLE001 - a broken image from model code is just dropped
            return None

    def live_interpreters(self) -> int:
        with self._lock:
            return sum(1 for t in self._trajs.values() if t.interp is not None and t.interp.alive)


@atexit.register
def close_all() -> None:
    """Close every PythonTool at interpreter exit (sandbox.py also kills stray interpreters)."""
    for tool in list(_instances):
        tool.close()

