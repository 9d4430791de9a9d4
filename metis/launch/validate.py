"""Start-up checks of a composed config: fail early, naming the key.

:func:`validate_config` runs before every run (and in ``dry_run``): required groups, rollout
limits, values whose type does not match the constructor they go to (``module.lr=abc``), the RL
prompt source (``data.source``), and the search back-ends (``require_real_search`` refuses the
shipped synthetic corpus and pattern-image index). :func:`check_resources` (``dry_run`` only)
reaches further: it reads the first rows of the data, imports the verifiers and asks the judge.
"""

from __future__ import annotations

import inspect
import logging
import os
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger("metis")

REQUIRED = ("model", "module", "data", "trainer")
TYPED_GROUPS = ("module", "data", "scoring", "reward", "loss", "rollout.loop", "rollout.engine")
RL_DATA_TARGET = "metis.data.rl_prompts.RLPromptDataModule"


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
    check_types(cfg)
    check_data_source(cfg)
    for line in search_backends(cfg, require_real=bool(cfg.get("require_real_search"))):
        log.info("search back-end: %s", line)
    trainer = cfg.trainer
    if check_hardware and trainer.get("accelerator") == "gpu":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=cpu on this machine")


# ---- value types against the constructor signatures ------------------------------------------
def _accepts(hint: Any, value: Any) -> bool | None:
    """Whether ``value`` fits ``hint`` (None: the hint is not a plain number/string/bool type)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        verdicts = [_accepts(h, value) for h in typing.get_args(hint)]
        return True if any(v is True for v in verdicts) else (None if None in verdicts else False)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return None


def check_types(cfg: DictConfig) -> None:
    """A scalar that the constructor it is passed to types as int/float/bool/str must be one."""
    from hydra.utils import get_class

    for group in TYPED_GROUPS:
        node = OmegaConf.select(cfg, group)
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        try:
            target = get_class(str(node._target_))
            hints = typing.get_type_hints(target.__init__)
            params = inspect.signature(target.__init__).parameters
        except Exception:  # noqa: BLE001 - a target that is a function, or unresolvable hints
            continue
        for key in node:
            if key not in params or key not in hints or OmegaConf.is_missing(node, key):
                continue
            try:
                value = node[key]
            except Exception:  # noqa: BLE001 - an interpolation that cannot resolve yet
                continue
            if isinstance(value, (DictConfig, ListConfig)):
                continue
            if _accepts(hints[key], value) is False:
                raise ConfigError(f"{group}.{key}={value!r} is not a valid {_hint_name(hints[key])}")


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


# ---- data -------------------------------------------------------------------------------------
def check_data_source(cfg: DictConfig) -> None:
    """``data.source`` must be set for RL prompt sets and must exist when it names a local path."""
    data = cfg.data
    source = data.get("source") if isinstance(data, DictConfig) else None
    if str(data.get("_target_", "")) == RL_DATA_TARGET and not source:
        from metis.data.rl_prompts import HUB_ID

        raise ConfigError(f"data.source is not set: pass data.source=<parquet file, folder of parquet files or hub "
                          f"dataset id>; the published RL prompts are {HUB_ID}")
    if not isinstance(source, str):
        return
    path = Path(source).expanduser()
    if path.exists():
        return
    looks_local = bool(path.suffix) or source.startswith((".", "/", "~")) or source.count("/") != 1
    if looks_local:
        raise ConfigError(f"data.source={source}: no such file or folder")


# ---- search back-ends -------------------------------------------------------------------------
def _provider_line(tool: str, provider: Any, require_real: bool) -> str:
    target = str(provider.get("_target_", "")) if isinstance(provider, DictConfig) else ""
    kind = target.rsplit(".", 1)[-1]
    key = f"tools.{tool}.provider"
    if kind == "BM25Provider":
        corpus = provider.get("corpus_path")
        if corpus is None:
            if require_real:
                raise ConfigError(f"{key}: the shipped synthetic corpus is refused for this run (require_real_search): "
                                  "set a BM25 corpus_path or an HTTPSearchProvider (see docs/recipe.md)")
            return f"{tool}: BM25 over the shipped synthetic corpus (not real search)"
        if not Path(str(corpus)).exists():
            raise ConfigError(f"{key}.corpus_path={corpus}: no such file")
        return f"{tool}: BM25 over {corpus}"
    if kind == "LocalImageIndex":
        folder = provider.get("folder")
        if folder is None:
            if require_real:
                raise ConfigError(f"{key}: the shipped pattern-image index is refused for this run "
                                  "(require_real_search): set a CachedResultsProvider path (results keyed by "
                                  "extra_info.index) or an HTTPImageSearchProvider (see docs/recipe.md)")
            return f"{tool}: perceptual hash over the shipped pattern images (not real search)"
        if not (Path(str(folder)) / "captions.jsonl").exists():
            raise ConfigError(f"{key}.folder={folder}: no captions.jsonl there")
        return f"{tool}: local image index {folder}"
    if kind == "CachedResultsProvider":
        path = provider.get("path")
        if not path or not Path(str(path)).exists():
            raise ConfigError(f"{key}.path={path}: no such offline search cache")
        return f"{tool}: offline cache {path} (keyed by extra_info.index)"
    if kind in ("HTTPSearchProvider", "HTTPImageSearchProvider"):
        url, env = provider.get("url"), provider.get("api_key_env")
        if not url:
            raise ConfigError(f"{key}.url is not set")
        if env and not os.environ.get(str(env)):
            raise ConfigError(f"{key}.api_key_env: environment variable {env} is not set (needed by {url})")
        return f"{tool}: HTTP {url}"
    return f"{tool}: {target or 'default provider'}"


def search_backends(cfg: DictConfig, require_real: bool = False) -> list[str]:
    """One line per search tool naming its back-end; raises for a missing back-end and, with
    ``require_real``, for the shipped synthetic ones."""
    tools = cfg.get("tools")
    entries = tools.get("tools") if isinstance(tools, DictConfig) else None
    lines = []
    for entry in entries or []:
        target = str(entry.get("_target_", ""))
        for cls, name in (("TextSearchTool", "text_search"), ("ImageSearchTool", "image_search")):
            if target.endswith(cls):
                lines.append(_provider_line(name, entry.get("provider"), require_real))
    return lines


# ---- dry run: reach the resources --------------------------------------------------------------
def check_resources(cfg: DictConfig, rows: int = 8) -> list[str]:
    """What ``dry_run`` checks beyond the config: the first ``rows`` rows of an RL prompt set parse
    (and one decodes), the verifiers import, the judge answers. Returns lines for the report."""
    import hydra

    done = []
    data = cfg.data
    if str(data.get("_target_", "")) == RL_DATA_TARGET:
        from metis.data.rl_prompts import RLPromptRows

        try:
            table = RLPromptRows(str(data.source), verifiers=data.get("verifiers"),
                                 default_verifier=data.get("default_verifier", "math"),
                                 system_prompt=data.get("system_prompt", "agent"), image_root=data.get("image_root"),
                                 max_rows=rows)
            task = next((t for t in (table.task(i) for i in table.usable) if t is not None), None)
        except (OSError, ValueError) as err:
            raise ConfigError(f"data.source={data.source}: {err}") from None
        if task is None:
            raise ConfigError(f"data.source={data.source}: none of the first {rows} rows decodes "
                              f"(skipped: {dict(table.skipped)})")
        done.append(f"data.source: {len(table.usable)} of the first {rows} rows parse ({dict(table.checks)})")
    try:
        import math_verify  # noqa: F401

        from metis.rl.verifiers import VERIFIERS

        VERIFIERS.get("math")
    except ImportError as err:
        raise ConfigError(f"the math verifier needs math-verify: {err}") from None
    done.append("verifiers import")
    if cfg.get("scoring") is not None and cfg.scoring.get("judge") is not None:
        judge = cfg.scoring.judge
        for key in ("base_url", "model"):
            if not judge.get(key):
                raise ConfigError(f"scoring.judge.{key} is not set (or set METIS_JUDGE_URL / METIS_JUDGE_MODEL)")
        from metis.io.chat_client import JudgeUnavailable

        try:
            hydra.utils.instantiate(cfg.scoring)  # probes the endpoint
        except Exception as err:  # noqa: BLE001 - Hydra wraps the probe's error
            cause = err if isinstance(err, JudgeUnavailable) else err.__cause__
            if not isinstance(cause, JudgeUnavailable):
                raise
            raise ConfigError(f"scoring.judge: {cause}") from None
        done.append(f"judge {judge.base_url} answers")
    return done
