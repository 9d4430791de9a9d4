"""Capture and restore every RNG a run draws from (Python, NumPy, torch CPU and CUDA)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def fault_injection(step: int) -> None:
    """Kill this process with SIGKILL in the middle of RL step ``METIS_FAULT_KILL_AT_STEP``.

    Used by the resume tests to prove that a run killed mid-step and resumed continues exactly
    as an uninterrupted run; a no-op unless the variable is set.
    """
    import os
    import signal

    if os.environ.get("METIS_FAULT_KILL_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)
