"""Nothing crosses trajectories: trajectory A leaves a secret in every place we can think of
(kernel keyrings, scratch files, HOME, /tmp, /dev/shm, SysV shared memory, environment,
module state, an abstract unix socket, a detached background process), ends, and trajectory B,
started on A's very uid, looks for it everywhere and finds nothing."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from metis.tools import PythonTool
from metis.tools import sandbox
from metis.tools.isolation import isolating_modes

PLANT = r"""
import builtins, ctypes, json, os, subprocess, sys, types
S = %r
libc = ctypes.CDLL(None, use_errno=True)
done = {}
def attempt(name, fn):
    try:
        r = fn()
        done[name] = r is None or r >= 0
    except Exception as exc:
        done[name] = False
for ring in (-3, -4, -5):  # session, user, user-session keyrings
    attempt(f"keyring{ring}", lambda: libc.syscall(248, b"user", b"leak", S.encode(), len(S), ring))
for d in (".", os.environ.get("HOME", "."), "/tmp", "/dev/shm"):
    attempt("file " + d, lambda: open(os.path.join(d, "leak-" + S), "w").write(S) and None)
os.environ["LEAK"] = S
os.putenv("LEAK2", S)
sys.modules["leak"] = types.ModuleType("leak"); sys.modules["leak"].value = S
builtins.leak = S
libc.shmat.restype = ctypes.c_void_p
def shm():
    sid = libc.shmget(0x5EC7E7, 4096, 0o1666)
    if sid < 0:
        return -1
    addr = libc.shmat(sid, None, 0)
    ctypes.memmove(addr, S.encode(), len(S))
attempt("sysv shm", shm)
def daemon():  # a detached forked process holding the secret in an abstract socket name
    pid = os.fork()
    if pid == 0:
        import socket, time
        os.setsid()
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("\0" + S)
        sock.listen()
        time.sleep(600)
        os._exit(0)
attempt("background", daemon)
attempt("background exec", lambda: subprocess.Popen(["/bin/sh", "-c", "sleep 600", S],
        start_new_session=True) and None)
import time; time.sleep(0.5)
print("PLANTED" + json.dumps(done))
"""

SEARCH = r"""
import builtins, ctypes, json, os, sys
S = %r
libc = ctypes.CDLL(None, use_errno=True)
places = {"env": repr(dict(os.environ)), "modules": repr(sorted(sys.modules)),
          "builtins": repr(getattr(builtins, "leak", "")), "globals": repr(globals().keys())}
def read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""
for d in (".", os.environ.get("HOME", "."), "/tmp", "/dev/shm"):
    for root, dirs, files in os.walk(d):
        for name in files:
            places["file " + os.path.join(root, name)] = name + read(os.path.join(root, name))
for pid in filter(str.isdigit, os.listdir("/proc")):
    places["proc " + pid] = read(f"/proc/{pid}/cmdline") + read(f"/proc/{pid}/environ")
for f in ("/proc/net/unix", "/proc/keys", "/proc/key-users", "/proc/sysvipc/shm"):
    places[f] = read(f)
buf = ctypes.create_string_buffer(4096)
for ring in (-3, -4, -5):  # KEYCTL_READ of each keyring, KEYCTL_SEARCH for the key
    n = libc.syscall(250, 11, ring, buf, 4096)
    places[f"keyring{ring}"] = buf.raw[:max(n, 0)].decode("latin-1")
    kid = libc.syscall(250, 10, ring, b"user", b"leak", 0)
    if kid > 0:
        n = libc.syscall(250, 11, kid, buf, 4096)
        places[f"key in {ring}"] = buf.raw[:max(n, 0)].decode("latin-1")
libc.shmat.restype = ctypes.c_void_p
sid = libc.shmget(0x5EC7E7, 0, 0)
if sid >= 0:
    addr = libc.shmat(sid, None, 0)
    places["sysv shm"] = ctypes.string_at(addr, 4096).decode("latin-1") if addr not in (None, ctypes.c_void_p(-1).value) else ""
print("FOUND" + json.dumps(sorted(k for k, v in places.items() if S in v)), len(places))
"""


@pytest.mark.parametrize("mode", isolating_modes())
def test_a_secret_left_by_a_is_not_found_by_b_on_the_same_uid(mode, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("reusing a sandbox uid needs root")
    secret = "leak-" + uuid.uuid4().hex
    tool = PythonTool(sandbox=mode, pool_size=0, timeout_s=20)
    try:
        tool.start("a", [])
        planted = tool.call("a", {"code": PLANT % secret})
        assert "PLANTED" in planted.text, planted.text
        done = json.loads(planted.text.split("PLANTED", 1)[1].splitlines()[0])
        # what must be possible inside a sandbox was really done (the test is not vacuous) ...
        for place in ("file .", "file /tmp", "sysv shm", "background", "background exec"):
            assert done[place], (place, done)
        # ... and the kernel keyrings refuse the secret (seccomp)
        assert not any(v for k, v in done.items() if k.startswith("keyring")), done
        uid = tool._trajs["a"].interp.uid
        tool.end("a")
        tool._reap_queue.put(None)  # wait until the reaper has killed A and released its uid
        tool._reaper.join(timeout=30)
        monkeypatch.setattr(sandbox, "lease_uid", lambda base: uid)
        tool._reaper = __import__("threading").Thread(target=tool._reap_loop, daemon=True)
        tool._reaper.start()
        tool.start("b", [])
        found = tool.call("b", {"code": SEARCH % secret})
        assert "FOUND" in found.text, found.text
        assert tool._trajs["b"].interp.uid == uid
        places = json.loads(found.text.split("FOUND", 1)[1].split()[0])
        assert places == [], places
    finally:
        tool.close()


def test_forked_interpreters_cannot_see_each_others_scratch_dirs():
    """The fork server's interpreters share one bwrap: each sees only its own scratch dir
    (``/scratches``, which holds all of them, is covered and cannot be unmounted)."""
    tool = PythonTool(sandbox="auto", pool_size=0)
    try:
        if tool.zygote is None:
            pytest.skip("the fork server runs with bwrap as root")
        assert tool.call("a", {"code": "open('mine.txt', 'w').write('A')"}).error is None
        code = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "print(os.listdir('/scratches'), os.listdir('.'), "
                "libc.umount2(b'/scratches', 2), ctypes.get_errno())")
        obs = tool.call("b", {"code": code})
        assert obs.text.endswith("[] ['.mpl'] -1 1\n") or obs.text.endswith("[] [] -1 1\n"), obs.text
    finally:
        tool.close()
