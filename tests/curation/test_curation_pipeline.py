"""The whole pipeline over a raw set with planted defects: every defect is removed by the stage meant
for it and by nothing else, bad rows are reported, the reports' counts match, W&B gets the report.

The stages, the rollout loop, the tiny model's processor, the sandbox and the judge's HTTP path are
the real ones; only the rollout engine (planted answers) and the judge server (rules) stand in.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from curation_helpers import curate_cfg, judge_overrides, kept, planted, results

from metis.curate import curate

SFT_STAGES = ("reexecute", "no_tool_solvable", "judge")


def run_pipeline(root: Path, raw: dict, cache: str, judge_url: str, wandb_stage: str | None = None) -> dict:
    plan_path = raw["plan_path"]
    extra = {"reexecute": [f"raw_sft={raw['sft']}"], "no_tool_solvable": planted(plan_path, cache),
             "judge": judge_overrides(judge_url), "rl_pass_rate": [f"raw_rl={raw['rl']}", *planted(plan_path, cache)]}
    reports = {}
    for stage, overrides in extra.items():
        cfg = curate_cfg(root, stage, *overrides, wandb=stage == wandb_stage)
        reports[stage] = curate(cfg)
    return reports


def check_against_plan(root: Path, plan: dict, reports: dict) -> None:
    """Each planted defect removed by its stage (and reason), nothing else removed, counts match."""
    rows = {stage: results(root / stage) for stage in (*SFT_STAGES, "rl_pass_rate")}
    final_sft = {i for i, _ in kept(root / "judge")}
    for rid, entry in plan["sft"].items():
        removed_by = next(((s, rows[s][rid]["reason"]) for s in SFT_STAGES
                           if rid in rows[s] and rows[s][rid]["status"] == "dropped"), None)
        want = (entry["expected_stage"], entry["expected_reason"]) if entry["expected_stage"] else None
        assert removed_by == want, f"{rid} ({entry['kind']}): removed by {removed_by}, expected {want}"
        assert (rid in final_sft) == (want is None), rid
    for rid, kind in plan["bad_rows"].items():
        assert rows["reexecute"][rid]["status"] == "bad_input" and rows["reexecute"][rid]["reason"] == kind
    final_rl = {i for i, _ in kept(root / "rl_pass_rate")}
    for rid, entry in plan["rl"].items():
        row = rows["rl_pass_rate"][rid]
        assert (row["status"], row["reason"]) == (("dropped", entry["expected"][1]) if entry["expected"] else ("kept", None))
        assert abs(row["details"]["pass_rate"] - entry["pass_rate"]) < 1e-9 and (rid in final_rl) == (row["status"] == "kept")
    # the reports' counts are the plan's
    n_in = len(plan["sft"]) + len(plan["bad_rows"])
    for stage in SFT_STAGES:
        expect = Counter(e["expected_reason"] for e in plan["sft"].values() if e["expected_stage"] == stage)
        rep = reports[stage]
        assert rep["status"] == "complete" and rep["removed_by_reason"] == dict(expect), stage
        assert rep["counts"]["in"] == n_in and rep["counts"]["removed"] == sum(expect.values())
        assert rep["counts"]["bad_input"] == (len(plan["bad_rows"]) if stage == "reexecute" else 0)
        assert rep["counts"]["kept"] == n_in - rep["counts"]["removed"] - rep["counts"]["bad_input"]
        n_in = rep["counts"]["kept"]
        md = (root / stage / "report.md").read_text()
        assert f"| in | {rep['counts']['in']} |" in md and f"| kept (out) | {rep['counts']['kept']} |" in md
    assert n_in == len(final_sft)
    rl = reports["rl_pass_rate"]
    cats = Counter(e["category"] for e in plan["rl"].values())
    kept_cats = Counter(e["category"] for e in plan["rl"].values() if not e["expected"])
    assert rl["by_category"] == {c: {"in": cats[c], "kept": kept_cats[c]} for c in cats}
    assert rl["counts"]["kept"] == sum(kept_cats.values())
    assert "Mix by category" in (root / "rl_pass_rate" / "report.md").read_text()
    assert (root / "README.md").read_text().count("| complete |") == 4


def test_pipeline_removes_each_planted_defect_with_its_stage(tmp_path, raw_small, judge_server, tiny_cache):
    server = judge_server()
    reports = run_pipeline(tmp_path, raw_small, tiny_cache, server.url, wandb_stage="judge")
    check_against_plan(tmp_path, raw_small["plan"], reports)
    # only trajectories that reached the judge were sent to it, once each
    assert server.counts() == Counter({i: 1 for i in results(tmp_path / "judge")})
    # kept samples carry every stage's details: judge scores and reasons, pass rates
    for rid, meta in kept(tmp_path / "judge"):
        cur = meta["curation"]
        assert set(cur) == set(SFT_STAGES) and cur["judge"]["scores"]["visual_relevance"] == 4
        assert all(c["justified"] and c["reason"] for c in cur["judge"]["tool_calls"])
        assert cur["no_tool_solvable"]["pass_rate"] < 1.0 and cur["reexecute"]["replayed"] == meta.get("used_tool", 0)
    rl_meta = dict(kept(tmp_path / "rl_pass_rate"))
    assert all(0 < m["pass8"] < 1 for m in rl_meta.values())
    assert any(m["curation"]["rl_pass_rate"]["mean_tool_calls"] > 0 for m in rl_meta.values())  # tools were on
    # the judge stage's report went to an offline W&B run
    from metis.utils.wandb_offline import read_history

    run_dir = next((tmp_path / "judge" / "wandb").glob("offline-run-*"))
    history = read_history(run_dir)
    logged = {k: v for row in history for k, v in row.items()}
    assert logged["curate/judge/removed"] == reports["judge"]["counts"]["removed"]
    assert logged["curate/judge/kept"] == reports["judge"]["counts"]["kept"]


@pytest.mark.slow
def test_full_pipeline_few_hundred_samples(tmp_path, judge_server, tiny_cache):
    from metis.curation.synthetic_raw import make_raw_sets

    raw = make_raw_sets(tmp_path / "raw", n_sft=240, n_rl=120, seed=1)
    server = judge_server()
    reports = run_pipeline(tmp_path / "run", raw, tiny_cache, server.url)
    check_against_plan(tmp_path / "run", raw["plan"], reports)
    print(json.dumps({s: r["counts"] for s, r in reports.items()}))
