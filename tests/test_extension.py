"""Extending Metis from outside the package exactly as docs/extending.md says: a reward scheme, a
tool and a benchmark live in a module and YAML files of a folder that is not part of the repository,
and are picked through the shipped Hydra configs with ``extensions=[...]`` and ``hydra.searchpath``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from metis.eval.benchmarks import BENCHMARKS, load_benchmark
from metis.rl.advantages import REWARD_SCHEMES
from metis.rl.scheme import RewardScheme
from metis.rl.types import RolloutScores
from metis.utils.registry import import_extensions

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
MODULE = "metis_test_ext"

PLUGIN = '''
from typing import Literal

from metis.core.task import Task
from metis.eval.benchmarks import BENCHMARKS, RowContext, row_images
from metis.rl.advantages import REWARD_SCHEMES, grpo_advantages
from metis.rl.params import NonNegative
from metis.rl.types import AdvantageChannel, AdvantageResult, RolloutScores
from metis.tools import Observation, Tool


@REWARD_SCHEMES.register("capped_calls")
def capped_calls(scores: RolloutScores, *, cap: int = 2, penalty: NonNegative = 0.5,
                 when: Literal["always", "correct"] = "always") -> AdvantageResult:
    over = (scores.num_tool_calls > cap).double()
    if when == "correct":
        over = over * (scores.r_ans > 0).double()
    reward = scores.r_ans.double() - penalty * over
    adv = grpo_advantages(reward, scores.group_ids)
    return AdvantageResult([AdvantageChannel("main", adv, 1.0)], rewards={"reward": reward})


class EchoTool(Tool):
    name = "echo"
    description = "Repeat the text."
    parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def call(self, traj_id, arguments):
        return Observation(text=self.prefix + arguments["text"])


@BENCHMARKS.register("my_loader")
def my_rows(row: dict, ctx: RowContext) -> list[Task]:
    return [Task(id=str(row["id"]), question=row["question"], images=row_images(row, ctx),
                 answer=str(row["answer"]), verifier="exact", data_source=ctx.data_source,
                 category=ctx.category)]
'''

YAMLS = {
    "reward/capped_calls.yaml": """
        _target_: metis.rl.scheme.RewardScheme
        name: capped_calls
        cap: 2
        penalty: 0.5
        when: always
    """,
    "tools/with_echo.yaml": """
        _target_: metis.tools.toolbox.ToolBox
        max_calls_per_trajectory: 10
        tools:
          - _target_: metis_test_ext.EchoTool
            prefix: "echo: "
    """,
    "benchmark/my_bench.yaml": """
        name: my_bench
        loader: my_loader
        path: {path}
        data_source: my_bench
        category: perception
        group_by: []
        extra_metrics: []
        primary_metric: accuracy
        loader_options: {{}}
    """,
}


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """A module and a conf folder outside the package; the registries are restored afterwards."""
    for registry in (REWARD_SCHEMES, BENCHMARKS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(code))
    data = tmp_path / "bench.jsonl"
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    data.write_text("\n".join(json.dumps({"id": i, "question": f"<image>What colour? ({i})", "answer": "red",
                                          "image": str(tmp_path / "red.png")}) for i in range(3)) + "\n")
    conf = tmp_path / "my_conf"
    for rel, text in YAMLS.items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(textwrap.dedent(text).format(path=data))
    yield conf
    sys.modules.pop(MODULE, None)


def _compose(config: str, conf: Path, *overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(config, overrides=[f"hydra.searchpath=[file://{conf}]", f"extensions=[{MODULE}]", *overrides])


def test_scheme_and_tool_from_outside(outside):
    overrides = [f"hydra.searchpath=[file://{outside}]", f"extensions=[{MODULE}]", "experiment=hdpo_tiny", "reward=capped_calls",
                 "reward.cap=1", "tools=with_echo"]
    # the documented command (dry_run: imports the extension, builds reward and loss, no hardware)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(outside.parent / "code"), str(ROOT)]))
    out = subprocess.run([sys.executable, "-m", "metis.train", *overrides, "dry_run=true"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "config OK" in out.stdout, out.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-m", "metis.train", *overrides, "reward.when=never", "dry_run=true"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "parameter 'when' must be one of" in bad.stderr

    cfg = _compose("config", outside, *overrides[2:])
    import_extensions(cfg.extensions)
    scheme = instantiate(cfg.reward)
    assert isinstance(scheme, RewardScheme) and scheme.describe() == {
        "name": "capped_calls", "cap": 1, "penalty": 0.5, "when": "always"}
    scores = RolloutScores(r_ans=[1.0, 1.0, 0.0, 0.0], r_fmt=[1, 1, 1, 1], num_tool_calls=[0, 3, 0, 3],
                           group_ids=[0, 0, 0, 0])
    result = scheme.compute(scores)
    assert result.rewards["reward"].tolist() == [1.0, 0.5, 0.0, -0.5]
    assert torch.argmax(result.channel("main").advantages).item() == 0
    # its parameters are typed from the signature alone: wrong values are refused, naming the key
    for bad, key in (({"cap": 1.5}, "cap"), ({"when": "never"}, "when"), ({"penalty": -1.0}, "penalty"),
                     ({"bogus": 1}, "bogus")):
        with pytest.raises(ValueError, match=key):
            RewardScheme("capped_calls", **bad)

    toolbox = instantiate(cfg.tools)
    try:
        assert [s["name"] for s in toolbox.specs()] == ["echo"]
        toolbox.start("t0", [])
        obs = toolbox.execute("t0", "echo", {"text": "hi"})
        assert obs.error is None and obs.text == "echo: hi"
        assert toolbox.execute("t0", "echo", {}).error == "parse_error"  # schema checked by the ToolBox
        toolbox.end("t0")
    finally:
        toolbox.close()


def test_benchmark_from_outside(outside):
    cfg = _compose("evaluate", outside, "benchmark=my_bench")
    import_extensions(cfg.extensions)  # what metis.evaluate does first
    bench = load_benchmark(**dict(cfg.benchmark))
    assert bench.skipped == [] and [t.id for t in bench.tasks] == ["0", "1", "2"]
    assert bench.tasks[0].images[0].size == (8, 8) and bench.tasks[0].answer == "red"


def test_missing_extension_is_one_clear_error():
    with pytest.raises(ImportError, match="extensions: cannot import 'no_such_ext_module'"):
        import_extensions(["no_such_ext_module"])
