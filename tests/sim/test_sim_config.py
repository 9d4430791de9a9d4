"""Scenarios, scheme selection, the report and the Hydra entry points of the simulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from metis.rl import REWARD_SCHEMES, RewardScheme
from metis.sim import History, SimConfig, build_scenario
from metis.sim.report import first_step_below, log_to_wandb, summarize, t_half_rise
from metis.sim.schemes import resolve_schemes, scheme_label

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
SCENARIOS = sorted(p.stem for p in (CONF / "sim").glob("*.yaml"))


def compose_sim(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="simulate", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_composes_and_starts_trigger_happy(scenario):
    from metis.sim import Simulator
    from metis.rl import PolicyLoss

    cfg = compose_sim(f"sim={scenario}")
    assert cfg.reward.name == "hdpo" and cfg.sim.name == scenario
    sc = build_scenario(OmegaConf.to_container(cfg.sim, resolve=True))
    assert sc.needs_tool.any() and (~sc.needs_tool).any()
    sim = Simulator(sc, RewardScheme("hdpo"), PolicyLoss(), SimConfig(**cfg.train), seeds=[0])
    m = sim.exact_metrics()
    assert float(m["tool_call_rate"]) == pytest.approx(0.95)
    assert 0.0 <= float(m["accuracy"]) <= sc.optimal_accuracy(0) + 1e-9


def test_scenario_validation_and_pool():
    base = dict(name="x", t_max=2, classes=[dict(name="a", needs_tool=False, p=[0.5])])
    sc = build_scenario(base)
    assert sc.p_start.tolist() == [[0.5, 0.5, 0.5]]
    for bad, key in [({"p": [0.5, 0.5, 0.5, 0.5]}, "t_max"), ({"p": [1.5]}, "[0, 1]"), ({"weight": 0}, "weight")]:
        with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("]", r"\]")):
            build_scenario({**base, "classes": [{**base["classes"][0], **bad}]})
    with pytest.raises(ValueError, match="kind"):
        build_scenario({**base, "kind": "nope"})
    with pytest.raises(ValueError, match="needs_tool"):
        build_scenario({**base, "classes": [dict(name="a", p=[0.5])]})
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "sim" / "item_pool.yaml").sim)
    a, b = build_scenario(cfg), build_scenario(cfg)
    assert torch.equal(a.p_start, b.p_start) and a.num_rows == a.num_units == 64
    assert bool((a.p_start[a.needs_tool, 1] > a.p_start[a.needs_tool, 0]).all())
    assert torch.equal(a.p_start[~a.needs_tool, 0], a.p_start[~a.needs_tool, 3])
    per_class = build_scenario({**cfg, "policy": "per_class"})
    assert per_class.num_rows == 2
    ramp = build_scenario(OmegaConf.to_container(OmegaConf.load(CONF / "sim" / "growing_skill.yaml").sim))
    assert ramp.success(0)[1, 1] == pytest.approx(0.05) and ramp.success(100)[1, 1] == pytest.approx(0.425)
    assert ramp.success(500)[1, 1] == pytest.approx(0.8)


def test_scheme_resolution_and_labels():
    assert scheme_label(RewardScheme("hdpo")) == "hdpo"
    assert scheme_label(RewardScheme("coupled", alpha=1.0)) == "coupled(alpha=1)"
    cfg = compose_sim("schemes=all")
    got = resolve_schemes(cfg.reward, cfg.schemes, cfg.variants, CONF)
    assert set(REWARD_SCHEMES.names()) <= set(got)
    assert "hdpo(w_tool=1)" in got and len(got) == len(REWARD_SCHEMES.names()) + len(cfg.variants)
    one = resolve_schemes(compose_sim("reward=coupled", "reward.alpha=0.5").reward, None, None, CONF)
    assert list(one) == ["coupled(alpha=0.5)"]
    listed = resolve_schemes(None, ["grpo", {"name": "hdpo", "eligible": "correct_and_used_tools"}], None, CONF)
    assert list(listed) == ["grpo", "hdpo(eligible=correct_and_used_tools)"]
    with pytest.raises(ValueError, match="unknown parameter 'bogus'"):
        resolve_schemes(None, [{"name": "hdpo", "bogus": 1}], None, CONF)


def _hist(values: list[float], label: str = "x") -> History:
    x = np.array(values, dtype=np.float64)[:, None].repeat(2, axis=1)
    rho = x.copy()
    rho[0] = np.nan
    m = {"accuracy": x, "unnecessary_tool_rate": 1 - x, "necessary_tool_rate": x, "tool_call_rate": x, "mean_T": x,
         "rho_Q": rho, "frac_reward_zero_std": rho, "efficiency_active_groups": rho, "frac_correct": rho,
         "mean_tool_calls": rho}
    return History(label=label, seeds=[0, 1], metrics=m, optimal_accuracy=1.0)


def test_summary_statistics():
    x = np.array([[0.5, 0.5], [0.2, 0.6], [0.05, 0.3], [0.01, 0.09]])
    assert first_step_below(x, 0.1).tolist() == [2.0, 3.0]
    assert t_half_rise(np.array([[0.0], [0.2], [0.6], [1.0], [1.0]]), smooth=1).tolist() == [2.0]
    assert np.isnan(t_half_rise(np.array([[0.5], [0.5], [0.51]]), smooth=1)).all()
    df = summarize([_hist([0.0, 0.5, 0.95, 0.95])], threshold=0.1, tail=2, smooth=1)
    r = df.iloc[0]
    assert r["accuracy"] == pytest.approx(0.95) and r["step_unnec_below"] == 2 and r["reached"] == 2
    assert r["rho_Q"] == pytest.approx(0.95) and r["t50_acc"] == 1


def test_log_to_wandb_with_a_stub_logger():
    calls: dict[str, list] = {"metrics": [], "names": [], "final": []}

    class Stub:
        def log_hyperparams(self, params):
            assert params["scheme"] in ("a", "b")

        def log_metrics(self, metrics, step):
            calls["metrics"].append((step, metrics))

        def finalize(self, status):
            calls["final"].append(status)

    def make(label):
        calls["names"].append(label)
        return Stub()

    hs = [_hist([0.1, 0.5, 0.9], "a"), _hist([0.2, 0.4, 0.6], "b")]
    log_to_wandb(hs, make, summarize(hs), {"k": 1})
    assert calls["names"] == ["a", "b"] and calls["final"] == ["success", "success"]
    step0 = calls["metrics"][0][1]
    assert "sim/accuracy" in step0 and "sim/rho_Q" not in step0  # NaN rows are skipped
    assert calls["metrics"][2][1]["sim/accuracy"] == pytest.approx(0.9)


def test_sweep_in_process_writes_table_and_plot(tmp_path):
    from metis.simulate import run_simulation

    cfg = compose_sim("schemes=all", "train.steps=12", "num_seeds=2", "sim=partial_help")
    cfg.paths.output_dir = str(tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # only a real Hydra run fills hydra.job / hydra.runtime
    res = run_simulation(cfg)
    df = pd.read_csv(tmp_path / "summary.csv")
    assert set(REWARD_SCHEMES.names()) <= set(df["scheme"])
    assert (df["seeds"] == 2).all() and (df["steps"] == 12).all()
    md = (tmp_path / "summary.md").read_text()
    assert "| `hdpo` |" in md and "±" in md
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert len(curves) == len(df) * 13 and {"accuracy", "rho_Q", "necessary_tool_rate"} <= set(curves.columns)
    assert res["wall_s"] > 0


def test_cli_multirun_over_schemes_and_seeds(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "metis.simulate", "--multirun", "reward=hdpo,grpo", "seed=0,7", "num_seeds=1",
         "train.steps=5", "report.plots=false", f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    tables = sorted(tmp_path.glob("*/summary.csv"))
    assert len(tables) == 4
    schemes = {pd.read_csv(t)["scheme"].iloc[0] for t in tables}
    assert schemes == {"hdpo", "grpo"}
