"""Unique sandbox uids, leased across every process on the machine.

When Metis runs as root each interpreter drops to a uid of its own, and its teardown SIGKILLs
every process of that uid. Two live interpreters sharing a uid would therefore kill each other
(and lose the trajectory's state), so a uid is held by an exclusive ``flock`` on
``<tmp>/metis-sandbox-uids/<uid>`` for the interpreter's life. The kernel drops the lock when
the holder dies, so a crashed run never leaks uids. Processes start scanning at different
offsets (by pid), so the first try almost always succeeds.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import tempfile
import threading

from metis.tools.isolation import SandboxError

UID_SPAN = 65536
_lock = threading.Lock()
_held: dict[int, int] = {}  # uid -> fd holding its lock, in this process


@functools.lru_cache(maxsize=None)
def lease_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), "metis-sandbox-uids")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def lease_uid(base: int, span: int = UID_SPAN) -> int:
    """A uid in ``[base, base + span)`` that no live interpreter on this machine holds."""
    root = lease_dir()
    start = (os.getpid() * 64) % span
    with _lock:
        for i in range(span):
            uid = base + (start + len(_held) + i) % span
            if uid in _held:
                continue
            fd = os.open(os.path.join(root, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    continue  # another process's live interpreter
                raise
            _held[uid] = fd
            return uid
    raise SandboxError(f"all {span} sandbox uids from {base} are in use")


def release_uid(uid: int) -> None:
    """Give ``uid`` back (after every process of it is dead). Unknown uids are ignored."""
    with _lock:
        fd = _held.pop(uid, None)
    if fd is not None:
        os.close(fd)


def held_uids() -> set[int]:
    with _lock:
        return set(_held)


@functools.lru_cache(maxsize=None)
def check_uid_range(base: int, span: int = UID_SPAN,
                    id_files: tuple[str, ...] = ("/etc/passwd", "/etc/group"),
                    subid_files: tuple[str, ...] = ("/etc/subuid", "/etc/subgid")) -> None:
    """SandboxError when ``[base, base + span)`` holds an existing user or group id, or overlaps
    a subordinate-id range: killing "every process of the sandbox uid" would then hit them."""
    end = base + span
    clashes = []
    for path in id_files:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    parts = line.split(":")
                    if len(parts) > 2 and parts[2].isdigit() and base <= int(parts[2]) < end:
                        clashes.append(f"{parts[0]} (id {parts[2]} in {path})")
        except OSError:
            continue
    for path in subid_files:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    parts = line.strip().split(":")
                    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                        lo, n = int(parts[1]), int(parts[2])
                        if lo < end and base < lo + n:
                            clashes.append(f"{parts[0]}'s subordinate ids {lo}-{lo + n - 1} "
                                           f"({path})")
        except OSError:
            continue
    if clashes:
        raise SandboxError(
            f"the sandbox uid range {base}-{end - 1} (tools.python.uid_base) is in use: "
            + "; ".join(clashes[:5]) + ". Pick a free range.")
