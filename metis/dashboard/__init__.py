"""Curves of Metis runs: ``python -m metis.dashboard <runs...>`` (PNGs + one HTML page) and a saved
W&B workspace (``--wandb entity/project``); the callbacks that log the RL-step axis."""
