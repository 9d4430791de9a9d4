"""Metis: training multimodal agents to know when not to call a tool (HDPO on Qwen3-VL)."""

__version__ = "0.1.0"
