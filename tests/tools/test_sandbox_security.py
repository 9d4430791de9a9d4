"""Hostile model code against the python sandbox: every attempt must be contained, and the next
call in the same trajectory and in a new one must still work.

bwrap mode blocks everything below; the subprocess fallback (no namespaces) is held to the
subset it promises (limits, env, uid separation, cleanup), see docs/tools.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from metis.tools import PythonTool, SandboxConfig, ToolBox, sandbox
from metis.tools import isolation as sandbox_mod


def _bwrap_available() -> bool:
    try:
        return sandbox_mod.resolve_mode("bwrap") == "bwrap"
    except Exception:
        return False


BWRAP = _bwrap_available()
needs_bwrap = pytest.mark.skipif(not BWRAP, reason="bubblewrap cannot run here "
                                 "(apt-get install bubblewrap; needs namespaces)")

REPO = Path(__file__).resolve().parents[2]
SECRET = "metis-" + uuid.uuid4().hex


def no_procs_of_uid(uid: int, wait_s: float = 5.0) -> bool:
    deadline = time.monotonic() + wait_s
    while procs_of_uid(uid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def procs_of_uid(uid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
            if line.split()[1:2] == [str(uid)]:
                out.append(int(entry))
    return out


@dataclass
class Attempt:
    name: str
    code: str
    contained: Callable  # (obs, ctx) -> bool
    bwrap_only: bool = False


def _no_host_entries(path: str) -> Callable:
    def check(obs, ctx) -> bool:
        try:
            host = set(os.listdir(path)) - {".pyenv", "work"}
        except OSError:
            return True
        return not any(f"'{name}'" in obs.text for name in host)
    return check


def attempts(ctx: dict) -> list[Attempt]:
    marker = ctx["marker"]
    return [
        Attempt("read repo file", f"print(open('{REPO}/pyproject.toml').read())",
                lambda o, c: "[build-system]" not in o.text, bwrap_only=True),
        Attempt("list repo", f"import os\nprint(os.listdir('{REPO}'))",
                lambda o, c: "pyproject.toml" not in o.text, bwrap_only=True),
        Attempt("list /root", "import os\nprint(sorted(os.listdir('/root')))",
                _no_host_entries("/root")),
        Attempt("read ~/.bashrc of root", "print(open('/root/.bashrc').read())",
                lambda o, c: o.error == "execution_error"),
        Attempt("list /home", "import os\nprint(sorted(os.listdir('/home')))",
                _no_host_entries("/home"), bwrap_only=True),
        Attempt("read /etc/shadow", "print(open('/etc/shadow').read())",
                lambda o, c: o.error == "execution_error" and "root:" not in o.text),
        Attempt("read env secret", "import os\nprint(dict(os.environ))",
                lambda o, c: SECRET not in o.text),
        Attempt("read parent's /proc environ",
                f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",
                lambda o, c: SECRET not in o.text),
        Attempt("escape via /proc/1/root", "import os\nprint(sorted(os.listdir('/proc/1/root')))",
                _no_host_entries("/root"), bwrap_only=True),
        Attempt("write into the repo", f"open('{REPO}/PWNED_{marker}', 'w').write('x')",
                lambda o, c: not (REPO / f"PWNED_{marker}").exists()),
        Attempt("write /etc", f"open('/etc/pwned_{marker}', 'w').write('x')",
                lambda o, c: not os.path.exists(f"/etc/pwned_{marker}")),
        Attempt("write host /tmp", f"open('/tmp/pwned_{marker}', 'w').write('x')",
                lambda o, c: not os.path.exists(f"/tmp/pwned_{marker}"), bwrap_only=True),
        Attempt("become root", "import os\nos.setuid(0)\nprint(os.getuid())",
                lambda o, c: o.error == "execution_error"),
        Attempt("tcp to a host server",
                f"import socket\nsocket.create_connection(('127.0.0.1', {ctx['port']}), "
                "timeout=2)\nprint('connected')",
                lambda o, c: c["listener"].accepted == 0 and "connected\n" not in o.text,
                bwrap_only=True),
        Attempt("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n"
                "    except OSError:\n        pass",
                lambda o, c: o.error in ("timeout", "execution_error")
                and no_procs_of_uid(c["uid"])),
        Attempt("count forks", "import os, time\nn = 0\nfor _ in range(500):\n    try:\n"
                "        if os.fork() == 0:\n            time.sleep(30)\n        n += 1\n"
                "    except OSError:\n        break\nprint('forks', n)",
                lambda o, c: o.error == "timeout" or  # a loaded machine: stopped is contained
                ("forks " in o.text and int(o.text.split("forks ")[1].split()[0]) < 64)),
        Attempt("memory bomb", "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))",
                lambda o, c: o.error == "timeout" or
                (o.error == "execution_error" and "MemoryError" in o.text)),
        Attempt("one huge allocation", "x = bytearray(64 << 30)",
                lambda o, c: o.error == "execution_error" and "MemoryError" in o.text),
        Attempt("infinite loop", "while True:\n    pass", lambda o, c: o.error == "timeout"),
        Attempt("huge print", "print('A' * (50 << 20))", lambda o, c: len(o.text) < 10_000),
        Attempt("print loop", "for i in range(1_000_000):\n    print(i)",
                lambda o, c: len(o.text) < 10_000),
        Attempt("fd-level flood", "import os\nfor _ in range(200):\n    os.write(1, b'B' * 65536)",
                lambda o, c: len(o.text) < 20_000),
        Attempt("kill the parent", "import os\nos.kill(os.getppid(), 9)",
                lambda o, c: True),  # we are still here: the check is the next call working
        Attempt("kill the host test process", f"import os\nos.kill({os.getpid()}, 9)",
                lambda o, c: True),
        Attempt("kill own process group", "import os\nos.killpg(0, 9)", lambda o, c: True),
        Attempt("kill everything", "import os\nos.kill(-1, 9)", lambda o, c: True),
    ]


def _run_all(mode: str, tcp_listener) -> list[tuple[str, bool, str]]:
    os.environ["METIS_TEST_SECRET"] = SECRET  # set before any interpreter exists
    try:
        tool = PythonTool(sandbox=mode, timeout_s=2, pool_size=1, memory_mb=512,
                          max_processes=32, max_output_chars=2000)
        box = ToolBox([tool], max_calls_per_trajectory=1000)
        ctx = {"marker": uuid.uuid4().hex[:8], "port": tcp_listener.port, "listener": tcp_listener}
        results = []
        box.start("hostile", [])
        box.start("bystander", [])  # another trajectory's interpreter must come through unharmed
        box.execute("bystander", "python", {"code": "mine = 'intact'"})
        for att in attempts(ctx):
            if att.bwrap_only and mode != "bwrap":
                continue
            box.execute("hostile", "python", {"code": "hostile = 1"})  # make sure one is attached
            ctx["uid"] = tool._trajs["hostile"].interp.uid
            obs = box.execute("hostile", "python", {"code": att.code})
            ok = bool(att.contained(obs, ctx))
            again = box.execute("hostile", "python", {"code": "print(6 * 7)"})
            other = box.execute("bystander", "python", {"code": "print(mine)"})
            ok = ok and again.text.endswith("42\n") and other.text.endswith("intact\n")
            results.append((att.name, ok, obs.text[-300:]))
        box.start("fresh", [])  # and a new trajectory starts clean
        fresh = box.execute("fresh", "python", {"code": "print('hostile' in globals())"})
        assert fresh.text.endswith("False\n"), fresh.text
        box.close()
        return results
    finally:
        os.environ.pop("METIS_TEST_SECRET", None)


def _report(results: list[tuple[str, bool, str]]) -> None:
    print(f"\nsecurity attempts: {len(results)} tried, {sum(ok for _, ok, _ in results)} contained")
    failed = [(name, text) for name, ok, text in results if not ok]
    assert not failed, failed


@needs_bwrap
def test_hostile_code_is_contained_bwrap(tcp_listener):
    results = _run_all("bwrap", tcp_listener)
    assert len(results) == len(attempts({"marker": "", "port": 0, "listener": None}))
    _report(results)


def test_hostile_code_is_contained_subprocess_fallback(tcp_listener):
    if os.geteuid() != 0:
        pytest.skip("the fallback's uid separation needs root")
    _report(_run_all("subprocess", tcp_listener))


def test_state_does_not_leak_between_trajectories():
    tool = PythonTool(sandbox="auto", pool_size=1)
    box = ToolBox([tool])
    box.start("a", [])
    box.start("b", [])
    box.execute("a", "python", {"code": "import os\nsecret_a = 1\nopen('a.txt', 'w').write('a')\n"
                                        "open('/tmp/a.txt', 'w').write('a') if " + str(BWRAP)
                                        + " else None"})
    obs = box.execute("b", "python", {"code": "import os\nprint('secret_a' in globals(), "
                                              "os.path.exists('a.txt'), "
                                              "os.path.exists('/tmp/a.txt') and " + str(BWRAP) + ")"})
    assert obs.text.endswith("False False False\n"), obs.text
    box.close()


CHILD = textwrap.dedent("""
    import sys, time
    from metis.tools import PythonTool
    uids = []
    for mode in sys.argv[3:]:
        tool = PythonTool(sandbox=mode, pool_size=1, scratch_root=sys.argv[2])
        tool.start("t", [])
        tool.call("t", {"code": "import os, time\\nif os.fork() == 0:\\n    time.sleep(600)"})
        uids += [tool._trajs["t"].interp.uid] + [i.uid for i in list(tool.pool._ready)]
    print(" ".join(map(str, uids)), flush=True)
    if sys.argv[1] == "exit":
        sys.exit(0)   # no close(): atexit must clean up
    time.sleep(600)
""")


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_interpreters_die_with_their_parent(how, tmp_path):
    """Interpreters (and what they forked) go when the parent is SIGKILLed or exits without
    close(), in bwrap mode (pid namespace + --die-with-parent) and in the subprocess fallback
    (PR_SET_PDEATHSIG + the root guard killing the sandbox uid)."""
    if os.geteuid() != 0:
        pytest.skip("finding the sandbox processes by uid needs root")
    modes = ["subprocess"] + (["bwrap"] if BWRAP else [])
    proc = subprocess.Popen([sys.executable, "-c", CHILD, how, str(tmp_path), *modes],
                            stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    line = proc.stdout.readline()
    uids = [int(u) for u in line.split()]
    assert len(uids) >= 2 * len(modes) and all(procs_of_uid(u) for u in uids[:1]), line
    if how == "sigkill":
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert all(no_procs_of_uid(u, wait_s=10) for u in uids)
    if how == "sigkill":  # nobody could clean up: the next tool sweeps the dead owner's dirs
        assert os.listdir(tmp_path)
        assert sandbox.sweep_stale_scratch(str(tmp_path)) > 0
    assert os.listdir(tmp_path) == []


@needs_bwrap
def test_killing_bwrap_during_setup_leaves_no_stuck_init(tmp_path):
    """bwrap's namespace init blocks forever on an eventfd if the outer bwrap dies during set-up;
    Interpreter.kill() stops bwrap and kills its children first. Spawn and kill at once."""
    cfg = SandboxConfig(scratch_root=str(tmp_path))
    for i in range(20):
        interp = sandbox.Interpreter(cfg, "bwrap")
        time.sleep((i % 5) * 0.002)
        interp.kill()
    deadline = time.monotonic() + 5
    while True:
        stuck = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            if str(tmp_path).encode() in cmd and state not in ("Z", "X"):
                stuck.append(int(entry))
        if not stuck or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not stuck


def test_auto_falls_back_loudly_once(monkeypatch):
    monkeypatch.setattr(sandbox_mod, "_mode_cache", {"bwrap": ("", "bwrap is not installed")})
    monkeypatch.setattr(sandbox_mod, "_warned", False)
    monkeypatch.setattr(sandbox_mod.os, "geteuid", lambda: 0)  # as root (non-root: below)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert sandbox_mod.resolve_mode("auto") == "subprocess"
        assert sandbox_mod.resolve_mode("auto") == "subprocess"
    assert len([w for w in caught if "NOT SANDBOXED" in str(w.message)]) == 1
    with pytest.raises(sandbox_mod.SandboxError):
        sandbox_mod.resolve_mode("bwrap")


def test_auto_refuses_the_fallback_as_non_root(monkeypatch):
    """As non-root the fallback drops no uid: auto stops, naming the setting and the reason;
    only an explicit sandbox=subprocess accepts it."""
    monkeypatch.setattr(sandbox_mod, "_mode_cache", {"bwrap": ("", "bwrap is not installed")})
    monkeypatch.setattr(sandbox_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(sandbox_mod.SandboxError) as err:
        sandbox_mod.resolve_mode("auto")
    assert "tools.python.sandbox" in str(err.value) and "bwrap is not installed" in str(err.value)
    assert "no uid drop" in str(err.value)
    assert sandbox_mod.resolve_mode("subprocess") == "subprocess"
