"""Types and formats shared by every layer (tasks, trajectories, the turn format, images).

Imports nothing else from ``metis``, so data, agent, tools, eval and curation can all import it.
"""
