"""dry_run on the paper's RL experiment: it reads the data, asks the judge, checks the search
back-ends, and fails naming the key on every error; SFT and RL system prompts agree."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import compose_cfg
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import open_dict
from judge_server import VerdictServer

from metis.core.format import build_system_prompt
from metis.data.sft import agent_system_prompt
from metis.data.sft_synthetic import metis_system_prompt
from metis.launch.run import dry_run as run_dry
from metis.launch.validate import ConfigError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "data"))
from rl_rows import write_rl_parquet  # noqa: E402


def dry_run_cli(*overrides: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("SERPER_API_KEY", "METIS_JUDGE_URL", "METIS_RL_DATA")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "metis.train", "dry_run=true", *overrides], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    data = write_rl_parquet(tmp / "rl.parquet")
    cache = tmp / "image_search.jsonl"
    cache.write_text("".join(json.dumps({"key": k, "results": [{"title": f"landmark {k}"}]}) + "\n" for k in range(30)))
    server = VerdictServer()
    yield {"data": str(data), "cache": str(cache), "judge": server.url}
    server.close()


def paper_env(res) -> dict[str, str]:
    return {"SERPER_API_KEY": "test-key", "METIS_IMAGE_SEARCH_CACHE": res["cache"], "METIS_JUDGE_URL": res["judge"],
            "METIS_JUDGE_MODEL": "judge-model", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}


@pytest.mark.parametrize("experiment, run_name", [("hdpo_8b", "rl_8b_hdpo"), ("hdpo_8b_lora", "rl_8b_lora_hdpo")])
def test_8b_dry_run_checks_data_judge_and_search(resources, experiment, run_name):
    out = dry_run_cli(f"experiment={experiment}", f"data.source={resources['data']}", "scoring.judge.trust_env=false",
                      **paper_env(resources))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"config OK: {run_name}" in out.stdout  # run names carry the reward scheme
    assert "of the first 8 rows parse" in out.stdout and f"judge {resources['judge']} answers" in out.stdout
    assert "text_search: HTTP https://google.serper.dev/search" in out.stdout
    assert f"image_search: offline cache {resources['cache']}" in out.stdout


@pytest.mark.parametrize("overrides,env_drop,needle", [
    ((), (), "data.source is not set"),
    (("data.source=/nonexistent/rl.parquet",), (), "data.source=/nonexistent/rl.parquet"),
    (("module.lr=abc",), (), "module.lr"),
    (("tools=all",), (), "tools.text_search.provider: the shipped synthetic corpus is refused"),
    ((), ("SERPER_API_KEY",), "SERPER_API_KEY is not set"),
    ((), ("METIS_IMAGE_SEARCH_CACHE",), "tools.image_search.provider.path"),
    (("scoring.judge.base_url=http://127.0.0.1:9/v1",), (), "scoring.judge: LLM endpoint http://127.0.0.1:9/v1"),
])
def test_hdpo_8b_dry_run_fails_naming_the_key(resources, monkeypatch, tmp_path, overrides, env_drop, needle):
    for key in ("SERPER_API_KEY", "METIS_IMAGE_SEARCH_CACHE", "METIS_JUDGE_URL", "METIS_RL_DATA"):
        monkeypatch.delenv(key, raising=False)
    for key, value in paper_env(resources).items():
        if key not in env_drop:
            monkeypatch.setenv(key, value)
    source = () if not overrides and not env_drop else (f"data.source={resources['data']}",)
    cfg = compose_cfg("experiment=hdpo_8b", *source, *overrides, "scoring.judge.trust_env=false",
                      f"hydra.run.dir={tmp_path}")
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.output_dir} as under the CLI
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        with pytest.raises(ConfigError, match=re.escape(needle)) as err:
            run_dry(cfg)
    finally:  # later tests of the session must not see this config as a running Hydra app's
        HydraConfig.instance().cfg = None
    if needle == "data.source is not set":
        assert "Accio-Lab/Metis-RL" in str(err.value)


def test_sft_and_rl_system_prompts_agree():
    sft = compose_cfg("experiment=sft_8b", return_hydra_config=False)
    rl = compose_cfg("experiment=hdpo_8b", return_hydra_config=False)
    rl_specs = [get_class(t._target_).spec() for t in rl.tools.tools]  # what ToolBox.specs() lists
    assert [s["name"] for s in rl_specs] == list(sft.data.tools) == ["python", "text_search", "image_search"]
    assert agent_system_prompt(sft.data.tools) == build_system_prompt(rl_specs)
    # the tiny pair: synthetic SFT records carry the prompt the python-only RL run shows
    tiny = compose_cfg("experiment=hdpo_tiny", return_hydra_config=False)
    tiny_specs = [get_class(t._target_).spec() for t in tiny.tools.tools]
    assert metis_system_prompt() == build_system_prompt(tiny_specs) == agent_system_prompt(["python"])
