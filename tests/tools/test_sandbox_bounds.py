"""Bounds per sandbox and robust housekeeping: each test exceeds a bound and checks that the
sandbox, not this (trainer) process, pays."""

from __future__ import annotations

import os
import time

import pytest

from metis.tools import PythonTool, sandbox
from metis.tools.isolation import SandboxError, isolating_modes
from metis.tools.uid_lease import check_uid_range, held_uids, release_uid


FORGE = r"""
import os, struct
sent = 0
for fd in range(3, 64):
    try:
        if os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:"):
            os.write(fd, struct.pack(">II", 200 << 20, 0) + b"x" * 65536)
            sent += 1
    except OSError:
        pass
print("sent", sent)
"""


@pytest.mark.parametrize("mode", isolating_modes())
def test_a_forged_reply_frame_costs_the_sandbox(mode):
    tool = PythonTool(sandbox=mode, pool_size=0, timeout_s=10)
    try:
        tool.call("t", {"code": "x = 1"})
        t0 = time.monotonic()
        obs = tool.call("t", {"code": FORGE})
        assert obs.error == "execution_error" and "size limit" in obs.text, obs.text
        assert time.monotonic() - t0 < 5  # refused on the header, not read for 200 MB
        again = tool.call("t", {"code": "print('x' in globals())"})  # a fresh interpreter
        assert again.error is None and again.text.endswith("False\n"), again.text
    finally:
        tool.close()


@pytest.mark.parametrize("mode", isolating_modes())
def test_no_cpu_between_calls(mode):
    """A process left running by model code is stopped when the call returns and continues
    with the next call."""
    tool = PythonTool(sandbox=mode, pool_size=0, timeout_s=10)
    try:
        code = ("import subprocess, sys\n"
                "p = subprocess.Popen(['/bin/sh', '-c', 'while :; do echo x >> ticks; "
                "sleep 0.01; done'])\nimport time; time.sleep(0.3)")
        assert tool.call("t", {"code": code}).error is None
        path = os.path.join(tool._trajs["t"].interp.scratch, "ticks")
        size = os.path.getsize(path)
        time.sleep(1.0)
        assert os.path.getsize(path) == size  # stopped: not one tick between calls
        assert tool.call("t", {"code": "import time; time.sleep(0.5)"}).error is None
        assert os.path.getsize(path) > size  # and running again during the next call
    finally:
        tool.close()


@pytest.mark.parametrize("mode", isolating_modes())
def test_core_dumps_off_and_the_oom_killer_picks_the_sandbox(mode):
    tool = PythonTool(sandbox=mode, pool_size=0, timeout_s=10)
    try:
        obs = tool.call("t", {"code": "import resource\nprint(resource.getrlimit("
                                      "resource.RLIMIT_CORE), open('/proc/self/oom_score_adj')"
                                      ".read().strip())"})
        assert obs.text.endswith("(0, 0) 1000\n"), obs.text
        with open("/proc/self/oom_score_adj") as fh:
            assert int(fh.read()) < 1000  # the trainer is never the preferred victim
    finally:
        tool.close()


def test_kill_uid_survives_fork_failures(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("kill_uid needs root")
    real_fork, calls = os.fork, []

    def flaky_fork():
        calls.append(1)
        if len(calls) <= 2:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()
    monkeypatch.setattr(sandbox.os, "fork", flaky_fork)
    assert sandbox.kill_uid(265_000) is True and len(calls) == 3

    def no_fork():
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(sandbox.os, "fork", no_fork)
    assert sandbox.kill_uid(265_000, tries=2) is False


def test_a_failed_teardown_keeps_the_uid_and_the_reaper(monkeypatch):
    """kill_uid failing must neither hand the uid to the next sandbox nor stop the reaper."""
    if os.geteuid() != 0:
        pytest.skip("uid leases need root")
    tool = PythonTool(sandbox="subprocess", pool_size=0, timeout_s=10)
    try:
        tool.call("a", {"code": "pass"})
        tool.call("b", {"code": "pass"})
        uid_a = tool._trajs["a"].interp.uid
        monkeypatch.setattr(sandbox, "kill_uid", lambda uid, tries=20: False)
        broken = tool._trajs["b"].interp
        monkeypatch.setattr(broken, "kill", lambda: (_ for _ in ()).throw(OSError("boom")))
        tool.end("b")  # raises inside the reaper
        tool.end("a")  # kill_uid "fails": uid_a must stay leased
        deadline = time.monotonic() + 10
        while not tool._reap_queue.empty():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # the reaper has taken both; let it finish the second
        assert tool._reaper.is_alive()
        assert uid_a in held_uids()
        monkeypatch.undo()
        assert tool.call("c", {"code": "print(1)"}).text.endswith("1\n")  # still serving
    finally:
        tool.close()
        sandbox.kill_uid(uid_a)
        release_uid(uid_a)


def test_uid_range_checked_against_passwd_and_subuid(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0::/root:/bin/bash\nsvc:x:200123:200123::/:/bin/false\n")
    subuid = tmp_path / "subuid"
    subuid.write_text("alice:100000:65536\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(SandboxError, match="svc.*200123"):
        check_uid_range(200_000, 65536, (str(passwd),), ())
    with pytest.raises(SandboxError, match="alice's subordinate ids 100000-165535"):
        check_uid_range(150_000, 65536, (str(empty),), (str(subuid),))
    check_uid_range(300_000, 65536, (str(passwd),), (str(subuid),))  # free: no error
    with pytest.raises(SandboxError, match="tools.python.uid_base"):
        check_uid_range(199_000, 2000, (str(passwd),), (str(subuid),))



MEMORY_BOMB = r"""
import os, time
kids = []
for _ in range(3):  # three processes, each under the per-process limit, together over budget
    pid = os.fork()
    if pid == 0:
        block = bytearray(b"x") * (200 << 20)
        time.sleep(60)
        os._exit(0)
    kids.append(pid)
time.sleep(30)
"""


@pytest.mark.parametrize("mode", isolating_modes())
def test_memory_is_bounded_per_sandbox(mode):
    if os.geteuid() != 0:
        pytest.skip("the memory watchdog tells sandboxes apart by uid (root)")
    tool = PythonTool(sandbox=mode, pool_size=0, timeout_s=25, memory_mb=1024,
                      sandbox_memory_mb=400, tmpfs_mb=512)
    try:
        t0 = time.monotonic()
        obs = tool.call("t", {"code": MEMORY_BOMB})
        assert obs.error == "execution_error", obs.text
        assert "sandbox_memory_mb=400" in obs.text and time.monotonic() - t0 < 20, obs.text
        again = tool.call("t", {"code": "print(6 * 7)"})
        assert again.text.endswith("42\n"), again.text
        # /tmp is RAM: 8 files of 60 MB (each under max_file_mb) count against the budget too
        fill = ("for i in range(8):\n    open(f'/tmp/f{i}', 'wb').write(b'y' * (60 << 20))\n"
                "import time; time.sleep(15)")
        tmp = tool.call("u", {"code": fill})
        assert tmp.error == "execution_error" and "sandbox_memory_mb=400" in tmp.text, tmp.text
    finally:
        tool.close()
