"""Start-up checks of a composed config: fail early, naming the key."""

from __future__ import annotations

from omegaconf import DictConfig

REQUIRED = ("model", "module", "data", "trainer")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


def validate_config(cfg: DictConfig, check_hardware: bool = True) -> None:
    for key in REQUIRED:
        if cfg.get(key) is None:
            raise ConfigError(f"config key '{key}' is missing (pick one with {key}=<option>)")
    rollout = cfg.get("rollout")
    if rollout is not None:
        if int(rollout.n) < 1:
            raise ConfigError(f"rollout.n must be >= 1, got {rollout.n}")
        loop = rollout.loop
        if int(loop.max_turns) < 1:
            raise ConfigError(f"rollout.loop.max_turns must be >= 1, got {loop.max_turns}")
        if int(loop.max_new_tokens) > int(loop.max_response_tokens):
            raise ConfigError("rollout.loop.max_new_tokens must be <= rollout.loop.max_response_tokens")
    trainer = cfg.trainer
    if check_hardware and trainer.get("accelerator") == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=cpu on this machine")
