"""`python -m metis.dashboard`: finding runs, grouping arms x seeds, seed means with 95 % bands,
PNGs and one self-contained HTML page; read from CSV logs and offline W&B runs."""

from __future__ import annotations

import base64
import csv
import math
from pathlib import Path

import pytest
import yaml

from metis.dashboard.__main__ import main
from metis.dashboard.plot import aggregate, mean_ci
from metis.dashboard.runs import find_runs, label_runs, load_run, with_rl_steps

FIELDS = ["step", "train/rl_step", "train/accuracy", "train/unnecessary_tool_rate", "train/rho_Q",
          "train/loss/acc", "train/source/vstar/accuracy", "val/accuracy", "val/unnecessary_tool_rate"]


def write_run(path: Path, reward: dict, seed: int, unnec: list[float], val_every: int = 2) -> Path:
    """A run folder as Metis leaves it with logger=csv: config.yaml and csv/version_0/metrics.csv
    (a validation row at step 0, one training row per RL step, a validation row every val_every)."""
    path.mkdir(parents=True)
    cfg = {"seed": seed, "experiment_name": "x", "reward": reward, "module": {"lr": 1e-4},
           "paths": {"output_dir": str(path)}, "trainer": {"max_steps": len(unnec), "default_root_dir": str(path)},
           "data": {"seed": seed, "source": {"seed": 0}}}  # as a resolved run config: data.seed = ${seed}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"step": 0, "val/accuracy": 0.5, "val/unnecessary_tool_rate": unnec[0]}]
    for i, u in enumerate(unnec, start=1):
        rows.append({"step": i, "train/rl_step": i, "train/accuracy": 0.5 + 0.01 * i, "train/unnecessary_tool_rate": u,
                     "train/rho_Q": 0.2, "train/loss/acc": -0.1, "train/source/vstar/accuracy": 0.4})
        if i % val_every == 0:
            rows.append({"step": i, "val/accuracy": 0.6, "val/unnecessary_tool_rate": u})
    (path / "csv" / "version_0").mkdir(parents=True)
    with open(path / "csv" / "version_0" / "metrics.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    hdpo = {"name": "hdpo", "w_tool": 0.15}
    write_run(root / "0", hdpo, 0, [1.0, 0.8, 0.5, 0.2])
    write_run(root / "1", hdpo, 1, [1.0, 0.6, 0.3, 0.0])
    write_run(root / "2", {"name": "grpo"}, 0, [1.0, 1.0, 0.9, 1.0])
    write_run(root / "3", {"name": "hdpo", "w_tool": 0.3}, 0, [1.0, 0.5, 0.1, 0.0])
    return root


def test_rows_get_rl_steps_validation_takes_the_last_training_step():
    rows = with_rl_steps([{"val/accuracy": "0.5"}, {"train/rl_step": 1, "train/accuracy": 0.1},
                          {"train/rl_step": 2}, {"val/accuracy": 0.7, "junk": ""}, {"train/rl_step": 3},
                          {"val/accuracy": 0.8, "val/rl_step": 3}])
    assert [r["rl_step"] for r in rows] == [0, 1, 2, 2, 3, 3]
    assert rows[0]["val/accuracy"] == 0.5 and "junk" not in rows[3]


def test_mean_ci_is_the_t_interval():
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert mean_ci([0.4]) == (0.4, 0.0)


def test_sweep_root_is_found_and_grouped_by_scheme_and_what_differs(sweep):
    runs = [load_run(d) for d in find_runs([str(sweep)])]
    assert len(runs) == 4
    groups = label_runs(runs)
    assert sorted(groups) == ["grpo", "hdpo, w_tool=0.15", "hdpo, w_tool=0.3"]
    assert sorted(r.seed for r in groups["hdpo, w_tool=0.15"]) == [0, 1]
    by_key = label_runs(runs, ["reward.name"])
    assert sorted(len(v) for v in by_key.values()) == [1, 3]
    # globs work too, and a run folder given twice counts once
    assert len(find_runs([str(sweep / "*"), str(sweep / "0")])) == 4


def test_seed_mean_per_rl_step(sweep):
    runs = [load_run(sweep / "0"), load_run(sweep / "1")]
    c = aggregate(runs, "train/unnecessary_tool_rate")
    assert c.steps == [1, 2, 3, 4] and c.n == [2, 2, 2, 2]
    assert c.mean == pytest.approx([1.0, 0.7, 0.4, 0.1]) and c.half[0] == 0.0 and c.half[1] > 0
    v = aggregate(runs, "val/unnecessary_tool_rate")
    assert v.steps == [0, 2, 4]  # step 0: the validation before training


def test_cli_writes_pngs_html_and_summary(sweep, tmp_path, capsys):
    out = tmp_path / "dash"
    assert main([str(sweep), "--out", str(out), "--title", "t"]) == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy.png", "efficiency_channel.png", "losses.png", "per_data_source.png", "tool_use.png"]
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 5 and "src='http" not in page  # self-contained
    embedded = page.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(embedded)[:4] == b"\x89PNG"
    rows = list(csv.DictReader(open(out / "summary.csv")))
    hdpo = next(r for r in rows if r["arm"] == "hdpo, w_tool=0.15")
    assert hdpo["runs"] == "2" and hdpo["val/unnecessary_tool_rate"].startswith("0.100 ± ")
    assert "3 arms" not in capsys.readouterr().err


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no such run or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no run folders" in capsys.readouterr().err


def test_help_documents_itself(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--out", "--group-by", "--smooth", "--wandb", "--group", "--print-spec"):
        assert opt in text


def test_the_miniature_arm_configs_group_into_one_arm_each(tmp_path):
    """The real arm configs (experiment=miniature/<arm>, seeds 0-2) group into one arm each: the first
    sweep's nine and the deciding sweep's three new ones (DECISION_RULES.md)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    arms = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf/experiment/miniature").glob("*.yaml"))
    assert len(arms) == 12
    root = tmp_path / "miniature" / "rl"
    i = 0
    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        for arm in arms:
            cfg = compose("config", overrides=[f"experiment=miniature/{arm}"])
            reward = OmegaConf.to_container(cfg.reward)
            for seed in (0, 1, 2):
                d = write_run(root / str(i), reward, seed, [1.0, 0.5])
                full = OmegaConf.to_container(cfg)  # unresolved: ${hydra:...} needs a running app
                full["seed"] = seed
                (d / "config.yaml").write_text(yaml.safe_dump(full))
                i += 1
    groups = label_runs([load_run(d) for d in find_runs([str(root)])])
    assert len(groups) == len(arms) and all(len(v) == 3 for v in groups.values())
    assert "grpo" in groups and "coupled, alpha=0.05" in groups, sorted(groups)
    # HDPO arms differ in w_tool and in how the tool term is averaged: both name the arm
    assert "hdpo, tool_term_nonzero_only=True, w_tool=0.15" in groups, sorted(groups)
    assert "hdpo, tool_term_nonzero_only=False, w_tool=0.15" in groups, sorted(groups)
