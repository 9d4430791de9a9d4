"""batching.py was not changed by the performance work: the legacy code uses the current module."""

from metis.agent.batching import model_inputs, response_positions, response_tensors

__all__ = ["model_inputs", "response_positions", "response_tensors"]
