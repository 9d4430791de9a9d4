"""Statistics and decision rules of the miniature, on constructed runs with known answers."""

import math

import numpy as np
import pytest
from scipy import stats as st

from metis.analysis.claims import Run, shadow_rho_q, verdicts
from metis.analysis.stats import (cluster_bootstrap, cluster_bootstrap_difference, fisher_exact, halfway_step, holm,
                                  one_sample, paired_difference, t_interval)


def test_t_interval_matches_textbook_and_refuses_to_invent():
    x = [0.2, 0.4, 0.5, 0.9]
    ci = t_interval(x)
    half = st.t.ppf(0.975, 3) * np.std(x, ddof=1) / 2
    assert ci.mean == pytest.approx(0.5) and ci.hi - ci.mean == pytest.approx(half)
    one = t_interval([0.3])
    assert one.n == 1 and one.lo == -math.inf and one.hi == math.inf
    assert t_interval([]).n == 0


def test_paired_difference_pairs_by_seed_and_p_value_is_one_sided():
    a = {0: 0.9, 1: 0.8, 2: 0.95, 3: 0.85, 9: 0.0}  # seed 9 has no partner: ignored
    b = {0: 0.1, 1: 0.2, 2: 0.05, 3: 0.15}
    ci, p = paired_difference(a, b)
    assert ci.n == 4 and ci.mean == pytest.approx(0.75) and ci.lo > 0
    assert p < 0.001
    _, p_rev = paired_difference(b, a)
    assert p_rev > 0.999
    assert one_sample([0.2, 0.2])[1] == 0.0 and one_sample([-0.2, -0.2])[1] == 1.0


def test_cluster_bootstrap_is_wider_than_a_naive_pooled_interval_when_seeds_differ():
    rng = np.random.default_rng(0)
    # seeds differ a lot (0.1 vs 0.9 rates); a pooled binomial interval would pretend 4*32*4 draws
    outcomes = {s: {f"p{i}": list(rng.random(4) < rate) for i in range(32)}
                for s, rate in enumerate([0.1, 0.9, 0.15, 0.85])}
    ci = cluster_bootstrap(outcomes, n_boot=500)
    pooled = np.concatenate([np.asarray(v, float) for d in outcomes.values() for v in d.values()])
    naive_half = 1.96 * pooled.std() / math.sqrt(len(pooled))
    assert ci.lo < ci.mean < ci.hi
    assert (ci.hi - ci.lo) / 2 > 3 * naive_half


def test_cluster_bootstrap_difference_detects_a_real_gap_and_not_a_fake_one():
    rng = np.random.default_rng(1)
    base = {s: {f"p{i}": list(rng.random(4) < 0.5) for i in range(24)} for s in range(4)}
    same = {s: {k: list(v) for k, v in d.items()} for s, d in base.items()}
    assert cluster_bootstrap_difference(base, same, n_boot=300).mean == 0.0
    high = {s: {k: [1.0] * 4 for k in d} for s, d in base.items()}
    gap = cluster_bootstrap_difference(high, base, n_boot=300)
    assert gap.lo > 0.3


def test_fisher_and_holm():
    assert fisher_exact(4, 4, 0, 4) == pytest.approx(1 / 70)
    assert fisher_exact(0, 4, 4, 4) == pytest.approx(1.0)
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": float("nan")})
    assert adj["a"] == pytest.approx(0.03) and adj["c"] == pytest.approx(0.06) and adj["b"] == pytest.approx(0.06)
    assert math.isnan(adj["d"])


def test_halfway_step():
    steps = list(range(10))
    assert halfway_step(steps, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1], window=1) == 4
    assert halfway_step(steps, [1.0] * 4 + [0.0] * 6, window=1) == 4
    assert math.isnan(halfway_step(steps, [0.5] * 10))


def _curves(acc_rise: int, unn_fall: int, n: int = 30) -> dict:
    steps = list(range(n))
    acc = [0.2 if s < acc_rise else 0.8 for s in steps]
    unn = [1.0 if s < unn_fall else 0.05 for s in steps]
    rho = [a * 0.5 for a in acc[: n // 2]] + [0.4 - 0.01 * i for i in range(n - n // 2)]
    return {"step": steps, "accuracy": acc, "unnecessary_tool_rate": unn, "rho_Q": rho}


def _paper_world(seeds=range(4)) -> list[Run]:
    rng = np.random.default_rng(3)
    runs = []
    for s in seeds:
        jitter = float(rng.uniform(-0.03, 0.03))
        runs.append(Run("hdpo", s, {"necessary_tool_rate": 0.95 + jitter, "accuracy_tool_needed": 0.85 + jitter,
                                    "unnecessary_tool_rate": 0.05 + jitter}, _curves(5 + s % 2, 15 + s)))
        runs.append(Run("coupled_a3", s, {"necessary_tool_rate": 0.2 + jitter, "accuracy_tool_needed": 0.3 - jitter,
                                          "unnecessary_tool_rate": 0.0}))
        runs.append(Run("coupled_a0.05", s, {"necessary_tool_rate": 1.0, "accuracy_tool_needed": 0.85,
                                             "unnecessary_tool_rate": 0.9 - jitter}))
    return runs


def test_verdicts_hold_in_a_world_where_the_paper_is_right():
    v = verdicts(_paper_world(), "hdpo", "coupled_a3", "coupled_a0.05")
    assert {k: x["verdict"] for k, x in v.items()} == {"claim1": "holds", "claim2": "holds", "claim3": "holds"}
    for x in v.values():  # the per-seed values reported beside each contrast are the ones it was computed from
        for c in x["contrasts"]:
            vals = list(c["per_seed"].values())
            assert len(vals) == c["n"] and abs(sum(vals) / len(vals) - c["mean"]) < 1e-12, c["name"]


def test_verdicts_refute_where_the_arms_do_not_differ_and_the_order_is_reversed():
    runs = []
    for s in range(4):
        same = {"necessary_tool_rate": 1.0 - 0.01 * s, "accuracy_tool_needed": 0.9 + 0.01 * s,
                "unnecessary_tool_rate": 0.05 + 0.01 * s}
        runs.append(Run("hdpo", s, dict(same), _curves(acc_rise=20 + s, unn_fall=4 + s % 2)))
        runs.append(Run("coupled_a3", s, {k: v + 0.005 * (s % 2) for k, v in same.items()}))
        runs.append(Run("coupled_a0.05", s, {k: v - 0.005 * (s % 2) for k, v in same.items()}))
    v = verdicts(runs, "hdpo", "coupled_a3", "coupled_a0.05")
    assert v["claim1"]["verdict"] == "refuted" and v["claim2"]["verdict"] == "refuted"
    assert v["claim3"]["verdict"] == "refuted"


def test_two_seeds_of_noise_are_inconclusive():
    runs = [Run("hdpo", 0, {"necessary_tool_rate": 0.9, "accuracy_tool_needed": 0.8, "unnecessary_tool_rate": 0.1}),
            Run("hdpo", 1, {"necessary_tool_rate": 0.5, "accuracy_tool_needed": 0.4, "unnecessary_tool_rate": 0.6}),
            Run("coupled_a3", 0, {"necessary_tool_rate": 0.4, "accuracy_tool_needed": 0.3, "unnecessary_tool_rate": 0.0}),
            Run("coupled_a3", 1, {"necessary_tool_rate": 0.6, "accuracy_tool_needed": 0.5, "unnecessary_tool_rate": 0.0}),
            Run("coupled_a0.05", 0, {"necessary_tool_rate": 1, "accuracy_tool_needed": 0.8, "unnecessary_tool_rate": 0.7}),
            Run("coupled_a0.05", 1, {"necessary_tool_rate": 1, "accuracy_tool_needed": 0.8, "unnecessary_tool_rate": 0.5})]
    v = verdicts(runs, "hdpo", "coupled_a3", "coupled_a0.05")
    assert v["claim1"]["verdict"] == "inconclusive" and v["claim2"]["verdict"] == "inconclusive"


def test_shadow_rho_q_matches_the_hdpo_scheme_on_the_same_rollouts():
    import torch

    from metis.rl.scheme import RewardScheme
    from metis.rl.types import RolloutScores

    rng = np.random.default_rng(0)
    rows = []
    for step in (1, 2):
        for g in range(3):
            for _ in range(4):
                rows.append({"rl_step": step, "group_id": 10 * step + g, "r_ans": float(rng.random() < 0.6),
                             "r_fmt": 1.0, "num_tool_calls": int(rng.integers(0, 3))})
    shadow = shadow_rho_q(rows)
    scheme = RewardScheme("hdpo")
    for step in (1, 2):
        sub = [r for r in rows if r["rl_step"] == step]
        scores = RolloutScores(r_ans=torch.tensor([r["r_ans"] for r in sub]), r_fmt=torch.ones(len(sub)),
                               num_tool_calls=torch.tensor([r["num_tool_calls"] for r in sub]),
                               group_ids=torch.tensor([r["group_id"] for r in sub]))
        assert shadow[step] == pytest.approx(scheme.compute(scores).metrics["rho_Q"])


def test_gate_passes_a_calibrated_cold_start_and_names_what_an_accurate_one_fails():
    from metis.analysis.gate import gate_metrics, gate_verdict

    def samples(p_correct_needed, p_correct_unneeded, p_call_unneeded, k=4, n=16):
        rng = np.random.default_rng(0)
        rows = []
        for i in range(n):
            need = i % 2 == 0
            for _ in range(k):
                p = p_correct_needed if need else p_correct_unneeded
                rows.append({"prompt_id": f"p{i}", "needs_tool": need, "correct": bool(rng.random() < p),
                             "called": bool(need or rng.random() < p_call_unneeded), "format_ok": True})
        return rows

    calibrated = gate_metrics(samples(0.35, 0.55, 0.8), no_tool_guess=1 / 6)
    assert gate_verdict(calibrated)["passed"], calibrated
    accurate = gate_verdict(gate_metrics(samples(1.0, 1.0, 0.9), no_tool_guess=1 / 6))
    assert not accurate["passed"] and not accurate["accuracy"] and not accurate["all_correct_unneeded"]
    assert accurate["unnecessary_call_rate"] and accurate["tool_gain"]


def test_decide_report_from_per_run_files(tmp_path):
    """The report reads only the per-run files, and its verdicts are the rules' verdicts."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "experiments" / "miniature" / "decide_report.py"
    spec = importlib.util.spec_from_file_location("decide_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = _paper_world()
    names = {"hdpo": "hdpo_w0.15", "coupled_a3": "coupled_a3", "coupled_a0.05": "coupled_a0.05"}
    for r in runs:
        final = dict(r.final, accuracy=0.5, accuracy_tool_unneeded=0.9, mean_tool_calls=0.5)
        curves = r.curves or _curves(10, 20)
        doc = {"arm": names[r.arm], "seed": r.seed, "steps": 30, "final_sampled": final, "final_greedy": None,
               "needs_tool": {"a": True, "b": False}, "per_prompt": {"correct": {"a": [1, 0], "b": [1, 1]},
                                                                     "called": {"a": [1, 1], "b": [0, 1]}},
               "curves": {**curves, "shadow_rho_Q": curves["rho_Q"]}}
        (tmp_path / f"{doc['arm']}_s{r.seed}.json").write_text(json.dumps(doc))
    (tmp_path / "times.tsv").write_text("calibrate\tall\t400\npreflight\tx\t25\nrl_0\tl\t300\nrl_1\tl\t500\n"
                                        "total\tall\t4000\n")
    final = {"accuracy": 0.5, "accuracy_tool_needed": 0.4, "unnecessary_tool_rate": 0.9, "necessary_tool_rate": 1.0}
    (tmp_path / "simulator.json").write_text(json.dumps({
        "candidate": "sft_x", "start_call_rate": 0.7, "steps": 60,
        "scenario": {"sim": {"classes": [{"name": "unneeded", "p": [0.4, 0.6]}, {"name": "needed", "p": [0.16, 0.5]}]}},
        "horizons": {"60": {"verdicts": {"claim1": "refuted"}, "final_mean": {"grpo": final}},
                     "600": {"verdicts": {"claim1": "inconclusive"}, "final_mean": {"grpo": final}}}}))
    out = mod.report(mod.load(tmp_path), tmp_path / "DECIDE.md", tmp_path / "verdicts.json")
    assert {k: v["verdict"] for k, v in out["verdicts"].items()} == {"claim1": "holds", "claim2": "holds",
                                                                     "claim3": "holds"}
    assert out["arms"]["coupled_a3"]["seeds"] == 4
    md = (tmp_path / "DECIDE.md").read_text()
    assert "**holds**" in md and "total **4000 s** against 5400 s" in md and "400 s each" in md
    assert out["simulator_verdicts"] == {"60": {"claim1": "refuted"}, "600": {"claim1": "inconclusive"}}
    assert "600 simulated steps, verdicts: claim1 **inconclusive**" in md and "unneeded 0.40 / 0.60" in md
    assert (tmp_path / "decide_curves.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "verdicts.json").read_text())["budget_s"]["total"] == 4000


def test_simulator_prediction_from_calibration_samples(tmp_path):
    """simulate_calibrated.py: the scenario's success table is the samples' conditional accuracies, and
    the simulated arms go through the same verdict rules as the real runs."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parents[2] / "experiments" / "miniature"
    sys.path.insert(0, str(here))
    spec = importlib.util.spec_from_file_location("simulate_calibrated", here / "simulate_calibrated.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    samples = ([{"needs_tool": False, "called": c, "correct": k, "format_ok": True} for c, k in
                [(True, True), (True, False), (False, True), (True, True)]]
               + [{"needs_tool": True, "called": c, "correct": k, "format_ok": f} for c, k, f in
                  [(True, True, True), (True, False, False), (False, False, True), (False, False, True)]])
    scen, call_rate = mod.scenario_from_samples(samples, "x")
    easy, hard = scen["sim"]["classes"]
    assert easy["p"] == [1.0, round(2 / 3, 4)] and hard["p"] == [0.0, 0.5]
    assert scen["sim"]["fmt_fail_rate"] == 0.125 and call_rate == (0.75 + 0.5) / 2
    assert mod.main(["--candidate", "sft_375", "--steps", "4", "--seeds", "2", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "simulator.json").read_text())
    assert set(doc["final_mean"]) == set(mod.ARMS) and set(doc["verdicts"]) == {"claim1", "claim2", "claim3"}
    assert all(v in ("holds", "refuted", "inconclusive") for v in doc["verdicts"].values())
