"""W&B: RL metrics defined against train/rl_step (read back from an offline run), and the saved
workspace built offline (its spec, without a server)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from metis.dashboard.__main__ import main
from metis.dashboard.callbacks import STEP_METRIC, VAL_STEP_METRIC, RLStepAxis
from metis.dashboard.panels import SECTIONS
from metis.dashboard.runs import load_run
from metis.dashboard.workspace import build_workspace, parse_project
from metis.utils.wandb_offline import read_records


def test_rl_metrics_are_defined_against_the_rl_step(tmp_path, monkeypatch):
    """train/* against train/rl_step, val/* against val/rl_step (validation rows keep no
    train/rl_step: readers count the rows holding it as training rows)."""
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\nreward: {name: hdpo}\n")
    logger = WandbLogger(project="metis", save_dir=str(run_dir), offline=True)
    trainer = SimpleNamespace(global_rank=0, loggers=[logger], sanity_checking=False,
                              callback_metrics={"train/accuracy": 1.0, "accuracy": 1.0, "val/accuracy": 0.5})
    module = SimpleNamespace(rl_step=0)
    cb = RLStepAxis()
    cb.on_train_start(trainer, module)
    logger.log_metrics({"val/accuracy": 0.25, VAL_STEP_METRIC: 0.0}, step=0)   # ValidateAtStart's row
    for step in (1, 2):
        logger.log_metrics({"train/accuracy": 0.5 * step, STEP_METRIC: float(step)}, step=step - 1)
        cb.on_train_batch_end(trainer, module, None, None, step - 1)
    logger.log_metrics({"val/accuracy": 0.75, VAL_STEP_METRIC: 2.0}, step=1)
    logger.experiment.finish()

    wandb_dir = next((run_dir / "wandb").glob("offline-run-*"))
    # finish() can return before wandb-core has written the log out: wait for its exit record
    deadline = time.monotonic() + 180
    while not any(r.WhichOneof("record_type") == "exit" for r in read_records(wandb_dir)):
        assert time.monotonic() < deadline, "the offline W&B log never got its exit record"
        time.sleep(0.5)
    defined = {}
    for rec in read_records(wandb_dir):
        if rec.WhichOneof("record_type") == "metric":
            m = rec.metric
            defined[m.name or m.glob_name] = m.step_metric
    for key in ("train/*", "train/accuracy"):
        assert defined.get(key) == STEP_METRIC, (key, defined)
    for key in ("val/*", "val/accuracy"):
        assert defined.get(key) == VAL_STEP_METRIC, (key, defined)
    from metis.utils.wandb_offline import read_history

    assert [r[STEP_METRIC] for r in read_history(wandb_dir) if STEP_METRIC in r] == [1.0, 2.0]
    assert "accuracy" not in defined  # the progress-bar copy is not a logged metric
    run = load_run(run_dir)
    assert run.series("val/accuracy") == {0.0: 0.25, 2.0: 0.75}
    assert run.series("train/accuracy") == {1.0: 0.5, 2.0: 1.0}


def test_workspace_has_the_dashboard_panels_against_the_rl_step():
    ws = build_workspace("team", "metis", group="miniature")
    assert [s.name for s in ws.sections] == [s.name for s in SECTIONS]
    assert ws.settings.x_axis == STEP_METRIC
    panels = [p for s in ws.sections for p in s.panels]
    assert len(panels) == 2 * sum(len(s.panels) for s in SECTIONS)   # training and validation
    assert (panels[0].x, panels[0].y) == (STEP_METRIC, ["train/accuracy"])
    assert (panels[1].x, panels[1].y) == (VAL_STEP_METRIC, ["val/accuracy"])
    spec = json.dumps(ws._to_model().model_dump(by_alias=True, exclude_none=True))
    assert '"groupBy": "reward.value.name"' in spec  # every panel grouped by the reward scheme
    assert "miniature" in spec and '"xAxis": "train/rl_step"' in spec


def test_workspace_cli_prints_the_spec_offline(capsys):
    assert main(["--wandb", "team/metis", "--group", "sweep1", "--group-key", "reward.w_tool", "--print-spec"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert spec["entity"] == "team" and spec["project"] == "metis"
    assert "reward.value.w_tool" in json.dumps(spec)
    assert main(["--wandb", "metis-only"]) == 2
    assert "entity>/<project" in capsys.readouterr().err


def test_parse_project():
    assert parse_project("a/b") == ("a", "b")
    for bad in ("a", "a/", "/b", "a/b/c"):
        with pytest.raises(ValueError):
            parse_project(bad)
