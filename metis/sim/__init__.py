"""Scheme simulator: a tabular tool-use policy trained with any registered reward scheme.

`scenario` (who is asked what, success tables), `engine` (sampling, the scheme's advantages, the
project's policy loss, exact metrics), `schemes` (which schemes a run covers), `report` (table,
CSV, plots, W&B). Entry point: `python -m metis.simulate` (`schemes=all` for every registered scheme).
"""

from metis.sim.engine import Batch, History, SimConfig, Simulator, simulate
from metis.sim.scenario import Scenario, build_scenario

__all__ = ["Batch", "History", "Scenario", "SimConfig", "Simulator", "build_scenario", "simulate"]
