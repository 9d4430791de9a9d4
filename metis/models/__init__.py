"""Policy models: the real Qwen3-VL loader and a tiny Qwen3-VL built from a config."""

from metis.models.loading import build_policy, load_processor, pick_attention
from metis.models.tiny import build_tiny

__all__ = ["build_policy", "build_tiny", "load_processor", "pick_attention"]
