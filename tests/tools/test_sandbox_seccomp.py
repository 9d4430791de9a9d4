"""The seccomp filter: the BPF program's verdict per syscall (run by a small BPF interpreter
here, for both architectures), and, inside real sandboxes, one test per denied call."""

from __future__ import annotations

import errno
import json
import struct

import pytest

from metis.tools import PythonTool
from metis.tools import _seccomp
from metis.tools.isolation import isolating_modes

ALLOW, KILL = 0x7FFF0000, 0x80000000
EPERM, ENOSYS = 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}


def run_bpf(prog: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Classic BPF, the subset the filter uses, over a ``struct seccomp_data``."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    ins = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    pc, acc = 0, 0
    for _ in range(len(ins) + 1):
        code, jt, jf, k = ins[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x06:
            return k
        elif code in (0x15, 0x35, 0x45):
            hit = acc == k if code == 0x15 else acc >= k if code == 0x35 else bool(acc & k)
            pc += 1 + (jt if hit else jf)
        else:
            raise AssertionError(f"unexpected BPF opcode {code:#x}")
    raise AssertionError("BPF program did not return")


@pytest.mark.parametrize("machine", sorted(ARCH))
def test_filter_verdicts(machine):
    prog = _seccomp.build_filter(machine)
    col = 0 if machine == "x86_64" else 1
    nrs = {name: v[col] for name, v in _seccomp._NR.items()}
    if col == 0:
        nrs.update(_seccomp._X86_ONLY)
    arch = ARCH[machine]
    for name in _seccomp.DENIED:
        if name in nrs:
            assert run_bpf(prog, nrs[name], arch) == EPERM, name
    assert run_bpf(prog, nrs["clone3"], arch) == ENOSYS
    assert run_bpf(prog, nrs["clone"], arch, arg0=0x01200011) == ALLOW  # fork()'s flags
    assert run_bpf(prog, nrs["clone"], arch, arg0=0x003D0F00) == ALLOW  # pthread_create's
    for flag in (0x20000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        assert run_bpf(prog, nrs["clone"], arch, arg0=flag | 17) == EPERM, hex(flag)
    for nr in (0, 1, 2, 57, 59, 60, 231) if col == 0 else (63, 64, 56, 93, 221):
        assert run_bpf(prog, nr, arch) == ALLOW, nr  # read, write, open/exec/exit ...
    assert run_bpf(prog, nrs["seccomp"], arch) == ALLOW  # adding filters only restricts more
    assert run_bpf(prog, 5, 0x40000003) == KILL  # i386 ABI (int 0x80) on the same kernel
    if col == 0:
        assert run_bpf(prog, 0x40000000 | 272, arch) == KILL  # x32 ABI


PROBE = r"""
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
NR = json.loads(%r)
NS = %d
out = {"seccomp": open("/proc/self/status").read().split("Seccomp:")[1].split()[0]}
def call(name, *args):
    ctypes.set_errno(0)
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    r = libc.syscall(ctypes.c_long(NR[name]), *args)
    if r == 0 and name in ("clone", "unshare_clone"):
        os._exit(0)  # a clone the filter let through: the child leaves at once
    return -ctypes.get_errno() if r == -1 else r
for name in NR:
    if name in ("clone", "clone3", "seccomp"):
        continue
    args = {"unshare": (NS,), "setns": (0, NS), "add_key": (b"user", b"k", b"v", 1, -4),
            "keyctl": (0, -4, 0), "request_key": (b"user", b"k", None, -4),
            "mount": (b"none", b"/tmp", b"tmpfs", 0, None), "umount2": (b"/tmp", 0),
            "pivot_root": (b"/tmp", b"/tmp"), "chroot": (b"/tmp",), "ptrace": (0, 0, 0, 0),
            "userfaultfd": (0,), "bpf": (0, None, 0), "io_uring_setup": (1, None)}.get(name, (0,) * 4)
    out[name] = call(name, *args)
out["clone"] = call("clone", 0x10000000 | 17, 0, 0, 0, 0)
out["clone3"] = call("clone3", 0, 0)
pid = os.fork()
if pid == 0:
    os._exit(0)
out["fork"] = os.waitpid(pid, 0)[1]
print("RESULT" + json.dumps(out))
"""


_results: dict[str, dict] = {}


def _probe(mode: str) -> dict:
    if mode not in _results:
        if not _seccomp.supported():
            pytest.skip("no seccomp table for this architecture")
        tool = PythonTool(sandbox=mode, pool_size=0, timeout_s=20)
        try:
            code = PROBE % (json.dumps(_seccomp.syscall_numbers()), _seccomp.NS_FLAGS)
            obs = tool.call("t", {"code": code})
        finally:
            tool.close()
        assert "RESULT" in obs.text, obs.text
        _results[mode] = json.loads(obs.text.split("RESULT", 1)[1].splitlines()[0])
    return _results[mode]


@pytest.mark.parametrize("mode", isolating_modes())
@pytest.mark.parametrize("name", _seccomp.DENIED + ["clone", "clone3"])
def test_denied_call_inside_the_sandbox(mode, name):
    res = _probe(mode)
    if name not in res:
        pytest.skip(f"{name} does not exist on this architecture")
    assert res["seccomp"] == "2"  # SECCOMP_MODE_FILTER
    want = -errno.ENOSYS if name == "clone3" else -errno.EPERM
    assert res[name] == want, (name, res[name])


@pytest.mark.parametrize("mode", isolating_modes())
def test_plain_fork_still_works(mode):
    assert _probe(mode)["fork"] == 0
