"""The sandbox's seccomp filter: a classic-BPF program built here (standard library only, so that
``_python_worker.py`` can import it inside the sandbox) and installed by the worker on all its
threads after it dropped privileges and before any model code runs. Children inherit it; it
cannot be removed.

What it denies (``EPERM`` unless noted), and why:
* namespaces: ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag; ``clone3`` gets
  ``ENOSYS`` (its flags sit behind a pointer BPF cannot read; libc then falls back to ``clone``);
* mounts: ``mount``, ``umount2``, ``pivot_root``, ``chroot``, the new mount API (``fsopen``,
  ``fsconfig``, ``fsmount``, ``fspick``, ``move_mount``, ``open_tree``, ``mount_setattr``);
* kernel keyrings (per-uid state that outlives every process, hence a cross-trajectory channel
  when a uid is reused): ``add_key``, ``keyctl``, ``request_key``;
* debugging / introspection of other processes: ``ptrace``, ``process_vm_readv/writev``,
  ``kcmp``, ``pidfd_getfd``, ``perf_event_open``, ``bpf``, ``userfaultfd``;
* kernel and host state: ``kexec_load``, ``kexec_file_load``, ``init_module``,
  ``finit_module``, ``delete_module``, ``reboot``, ``swapon``, ``swapoff``, ``acct``,
  ``quotactl``, ``syslog``, ``vhangup``, ``sethostname``, ``setdomainname``, clock setting,
  ``iopl``/``ioperm``, ``lookup_dcookie``, ``open_by_handle_at``, ``name_to_handle_at``;
* ``io_uring_*`` (a second syscall path the filter cannot see into).
A syscall of another ABI (i386 ``int 0x80``, x32) kills the process: the table below would not
apply to it. Architectures: x86_64 and aarch64; elsewhere ``build_filter`` raises.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

__all__ = ["DENIED", "NS_FLAGS", "build_filter", "install", "supported"]

# syscall numbers per architecture: name -> (x86_64, aarch64)
_NR = {
    "unshare": (272, 97), "setns": (308, 268), "clone": (56, 220), "clone3": (435, 435),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "move_mount": (429, 429), "open_tree": (428, 428), "mount_setattr": (442, 442),
    "add_key": (248, 217), "keyctl": (250, 219), "request_key": (249, 218),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "pidfd_getfd": (438, 438), "perf_event_open": (298, 241),
    "bpf": (321, 280), "userfaultfd": (323, 282),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "reboot": (169, 142),
    "swapon": (167, 224), "swapoff": (168, 225), "acct": (163, 89), "quotactl": (179, 60),
    "syslog": (103, 116), "vhangup": (153, 58), "sethostname": (170, 161),
    "setdomainname": (171, 162), "settimeofday": (164, 170), "clock_settime": (227, 112),
    "adjtimex": (159, 171), "clock_adjtime": (305, 266), "lookup_dcookie": (212, 18),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "seccomp": (317, 277),
}
_X86_ONLY = {"iopl": 172, "ioperm": 173}
DENIED = sorted(n for n in _NR if n not in ("clone", "clone3", "seccomp")) + sorted(_X86_ONLY)
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (and NEWTIME, 0x80)
NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | \
    0x40000000 | 0x00000080
_ARCH = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # column, AUDIT_ARCH_*

_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_X32_BIT = 0x40000000


def supported() -> bool:
    return platform.machine() in _ARCH


def syscall_numbers() -> dict[str, int]:
    """name -> number on this machine, for every syscall the filter looks at."""
    col, _ = _ARCH[platform.machine()]
    out = {name: nrs[col] for name, nrs in _NR.items()}
    if col == 0:
        out.update(_X86_ONLY)
    return out


def build_filter(machine: str | None = None) -> bytes:
    """The ``struct sock_filter[]`` program for ``machine`` (default: this one)."""
    machine = machine or platform.machine()
    if machine not in _ARCH:
        raise OSError(f"no seccomp syscall table for {machine}")
    col, audit_arch = _ARCH[machine]
    nrs = {name: v[col] for name, v in _NR.items()}
    denied = [nrs[n] for n in DENIED if n in nrs] + (list(_X86_ONLY.values()) if col == 0 else [])
    # tail (fixed, referenced by index from the end): ALLOW, EPERM, ENOSYS, clone check
    head: list[tuple[int, int, int, int]] = [(_LD_W_ABS, 0, 0, 4), (_JEQ, 1, 0, audit_arch),
                                             (_RET, 0, 0, _KILL), (_LD_W_ABS, 0, 0, 0)]
    checks: list[tuple[str, int]] = []  # (target, nr) of each jump
    if col == 0:
        checks.append(("kill_ge", _X32_BIT))
    checks += [("eperm", nr) for nr in denied] + [("enosys", nrs["clone3"]),
                                                  ("clone", nrs["clone"])]
    tail = [(_RET, 0, 0, _ALLOW),                       # +0 allow
            (_RET, 0, 0, _ERRNO | errno.EPERM),         # +1 eperm
            (_RET, 0, 0, _ERRNO | errno.ENOSYS),        # +2 enosys
            (_RET, 0, 0, _KILL),                        # +3 kill (x32)
            (_LD_W_ABS, 0, 0, 16),                      # +4 clone: low 32 bits of flags (arg 0)
            (_JSET, 0, 1, NS_FLAGS),                    # +5 any namespace flag -> +6
            (_RET, 0, 0, _ERRNO | errno.EPERM),         # +6
            (_RET, 0, 0, _ALLOW)]                       # +7
    where = {"eperm": 1, "enosys": 2, "kill_ge": 3, "clone": 4}
    prog = list(head)
    n_checks = len(checks)
    for i, (target, value) in enumerate(checks):
        jump = (n_checks - 1 - i) + where[target]  # from the next instruction to tail[+where]
        if jump > 255:
            raise ValueError("seccomp program too long for 8-bit jumps")
        prog.append((_JGE if target == "kill_ge" else _JEQ, jump, 0, value))
    prog += tail
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Set no_new_privs and install the filter on every thread of this process (TSYNC).

    Raises OSError when the kernel refuses (the caller must then not run model code)."""
    prog = build_filter()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    nr = syscall_numbers()["seccomp"]
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog)
    if libc.syscall(nr, 1, 1, ctypes.byref(fprog)) != 0:
        raise OSError(ctypes.get_errno(), f"seccomp() failed: {os.strerror(ctypes.get_errno())}")
