"""Metis' OmegaConf resolvers: ``metis_groups`` (help) and ``metis_asset`` (shipped files).

``--help`` of each Hydra entry point lists the config groups that entry point composes.

Hydra's stock ``$APP_CONFIG_GROUPS`` lists every folder under ``conf/`` (so ``metis.train --help``
offered ``benchmark``, ``stage`` and ``sim``). The help template in ``conf/hydra/default.yaml`` calls
the ``metis_groups`` resolver with ``hydra.runtime.choices``: the groups of this entry point's
defaults list, each with its options and the current choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """The options of a config group: its yaml files, sub-folders included (``miniature/grpo``)."""
    root = conf_dir / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml")) if root.is_dir() else []


def format_groups(choices: Any, conf_dir: Path = CONF_DIR) -> str:
    """``group: opt1, opt2 (now: opt)`` per group chosen by this entry point (Hydra's own groups apart)."""
    choices = OmegaConf.to_container(choices) if OmegaConf.is_config(choices) else dict(choices or {})
    lines = []
    for group in sorted(choices):
        if group == "hydra" or group.startswith("hydra/"):
            continue
        now = choices[group]
        options = group_options(group, conf_dir)
        lines.append(f"{group}: {', '.join(options) or '-'} (now: {now if now is not None else 'none'})")
    return "\n".join(lines)


ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"


def asset_path(name: str) -> str:
    """``${metis_asset:<name>}``: the absolute path of a file or folder shipped in ``metis/assets``."""
    path = ASSETS_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"metis/assets/{name} is not in this checkout: build it with `python "
                                "scripts/build_coldstart.py` (the recipe: conf/experiment/coldstart_marker.yaml)")
    return str(path)


def register() -> None:
    if not OmegaConf.has_resolver("metis_groups"):
        OmegaConf.register_new_resolver("metis_groups", format_groups)
    if not OmegaConf.has_resolver("metis_asset"):
        OmegaConf.register_new_resolver("metis_asset", asset_path)
