"""Memory per sandbox, not per process: what the processes of one sandbox uid hold (their PSS,
so pages shared with the zygote or each other count once) plus what its private ``/tmp`` holds.

There is no cgroup here (cgroup v2 is rarely delegated to a training job), so ``PythonTool``
runs ``sandbox_memory_usage`` on a timer (root only: the sandboxes are told apart by uid) and
kills a sandbox over its ``sandbox_memory_mb``; the call in flight then ends as an
``execution_error`` saying so.
"""

from __future__ import annotations

import os


def _pss_bytes(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) << 10
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _uid(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tmp_bytes(pid: str) -> int:
    """Bytes used on the ``/tmp`` that process ``pid`` sees (its sandbox's private tmpfs)."""
    try:
        st = os.statvfs(f"/proc/{pid}/root/tmp")
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    except OSError:
        return 0


def sandbox_memory_usage(uids: set[int], tmp: dict[int, bool] | None = None) -> dict[int, int]:
    """Bytes per uid in ``uids``: summed PSS of its processes, plus (where ``tmp[uid]``) the use
    of the private /tmp seen by one of them. One pass over /proc."""
    usage: dict[int, int] = {}
    seen_tmp: set[int] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        uid = _uid(pid)
        if uid not in uids:
            continue
        usage[uid] = usage.get(uid, 0) + _pss_bytes(pid)
        if tmp and tmp.get(uid) and uid not in seen_tmp:
            seen_tmp.add(uid)
            usage[uid] += _tmp_bytes(pid)
    return usage
