"""Which reward schemes a simulator run covers, built from the project's own conf/reward/*.yaml.

`schemes` in conf/simulate.yaml:
- null: only the composed `reward` group (`reward=<name>`, `reward.alpha=...`);
- "all": every name registered in REWARD_SCHEMES (from conf/reward/<name>.yaml when that file
  exists, else the registry defaults), then every entry of `variants`;
- a list of names or mappings `{name: <scheme>, <param>: <value>, ...}` (merged over
  conf/reward/<name>.yaml).

Labels are the scheme name plus the parameters that differ from the registry defaults, e.g.
`coupled(alpha=1)`, so two settings of one scheme never share a label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from metis.rl.advantages import REWARD_SCHEMES
from metis.rl.scheme import RewardScheme


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def scheme_label(scheme: RewardScheme) -> str:
    """`name` or `name(k=v,...)` listing the parameters that differ from the registry defaults."""
    defaults: Mapping[str, Any] = REWARD_SCHEMES.get(scheme.name).defaults
    diff = []
    for k, v in scheme.params.items():
        d = defaults.get(k)
        same = (float(d) == float(v)) if isinstance(v, float) and isinstance(d, (int, float)) else d == v
        if not same:
            diff.append(f"{k}={_fmt(v)}")
    return scheme.name if not diff else f"{scheme.name}({','.join(diff)})"


def _build(entry: str | Mapping[str, Any], conf_dir: Path) -> RewardScheme:
    spec: dict[str, Any] = {"name": entry} if isinstance(entry, str) else dict(entry)
    if "name" not in spec:
        raise ValueError(f"a scheme entry needs a 'name', got {spec}")
    path = conf_dir / "reward" / f"{spec['name']}.yaml"
    base = OmegaConf.load(path) if path.exists() else OmegaConf.create(
        {"_target_": "metis.rl.scheme.RewardScheme", "name": spec["name"]})
    merged = OmegaConf.merge(base, OmegaConf.create(spec))
    try:
        scheme = hydra.utils.instantiate(merged)
    except InstantiationException as e:  # surface the scheme's own ValueError (it names the key)
        raise ValueError(f"reward scheme entry {spec}: {e.__cause__ or e}") from e
    if not isinstance(scheme, RewardScheme):
        raise TypeError(f"conf/reward/{spec['name']}.yaml does not build a RewardScheme")
    return scheme


def resolve_schemes(reward_cfg: DictConfig | None, schemes: Any, variants: Iterable[Any] | None,
                    conf_dir: Path) -> dict[str, RewardScheme]:
    """label -> RewardScheme for the run (see module docstring); duplicate labels are dropped."""
    entries: list[RewardScheme] = []
    if schemes is None:
        if reward_cfg is None:
            raise ValueError("no `reward` group selected and `schemes` is null: nothing to simulate")
        entries.append(hydra.utils.instantiate(reward_cfg))
    else:
        if OmegaConf.is_config(schemes):
            schemes = OmegaConf.to_container(schemes, resolve=True)
        if schemes == "all":
            entries += [_build(n, conf_dir) for n in REWARD_SCHEMES.names()]
            schemes = OmegaConf.to_container(variants, resolve=True) if OmegaConf.is_config(variants) else list(variants or [])
        elif isinstance(schemes, str):
            schemes = [s.strip() for s in schemes.split(",") if s.strip()]
        entries += [_build(e, conf_dir) for e in schemes]
    out: dict[str, RewardScheme] = {}
    for s in entries:
        out.setdefault(scheme_label(s), s)
    return out
