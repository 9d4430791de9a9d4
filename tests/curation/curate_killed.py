"""``python -m metis.curate`` that SIGKILLs itself just before the rows of a batch are written (tests only).

``python tests/curation/curate_killed.py N <curate overrides...>`` runs the curation CLI unchanged,
except that :meth:`metis.curation.io.ResultLog.append` kills the process on its call number ``N``
(0-based): batches ``0 .. N-1`` of this run are on disk, batch ``N`` was processed (its judge
requests answered and cached) but its rows are lost, as in a crash between the two.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

from metis.curation.io import ResultLog

kill_at = int(sys.argv.pop(1))
_append = ResultLog.append
_calls = 0


def append_or_die(self: ResultLog, rows) -> None:
    global _calls
    if _calls == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    _calls += 1
    _append(self, rows)


ResultLog.append = append_or_die
runpy.run_module("metis.curate", run_name="__main__", alter_sys=True)
