"""``python -m metis.simulate_sweep sim=<scenario> [key=value ...]``: every registered reward scheme
(conf/reward/<name>.yaml) plus the `variants` of conf/simulate.yaml, all seeds, one process, one
table and one plot. Same as ``python -m metis.simulate schemes=all``.
"""

from __future__ import annotations

import sys

from metis.simulate import main

if __name__ == "__main__":
    if not any(a.startswith("schemes=") for a in sys.argv[1:]):
        sys.argv.append("schemes=all")
    main()
