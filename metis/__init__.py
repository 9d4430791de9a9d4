"""Metis: training multimodal agents to know when not to call a tool (HDPO on Qwen3-VL)."""

__version__ = "0.1.0"

from metis.utils.hydra_help import register as _register_help

_register_help()  # every entry point's --help lists only its own config groups
