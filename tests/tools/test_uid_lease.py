"""Sandbox uids are unique among live interpreters, across processes (the teardown of one
interpreter SIGKILLs every process of its uid, so a shared uid would kill a live neighbour)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from metis.tools.isolation import SandboxError
from metis.tools.uid_lease import held_uids, lease_uid, release_uid

BASE = 900_000  # far from the default uid_base, so live sandboxes of other tests never collide


def test_more_live_leases_than_the_old_per_process_block_are_all_distinct():
    uids = [lease_uid(BASE) for _ in range(200)]  # the old scheme cycled through 64 uids
    try:
        assert len(set(uids)) == 200
        assert set(uids) <= held_uids()
    finally:
        for uid in uids:
            release_uid(uid)
    assert not set(uids) & held_uids()


def test_a_uid_held_by_another_process_is_skipped_and_freed_when_it_dies():
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from metis.tools.uid_lease import lease_uid
        print(lease_uid({BASE + 7}, span=1), flush=True)
        sys.stdin.read()   # hold the lease until the parent closes stdin
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert int(holder.stdout.readline()) == BASE + 7
        with pytest.raises(SandboxError, match="in use"):
            lease_uid(BASE + 7, span=1)
        other = lease_uid(BASE + 7, span=2)
        assert other == BASE + 8
        release_uid(other)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    again = lease_uid(BASE + 7, span=1)  # the kernel dropped the dead holder's lock
    assert again == BASE + 7
    release_uid(again)
