"""Answer checking: verifier routing per data source, the judge in a bounded pool, outages."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from judge_server import VerdictServer

from metis.agent.scoring import ScoredBatch, Scorer, UnscoredStepError, scheme_over_kept, subset_scores
from metis.rl.scheme import RewardScheme
from metis.rl.types import RolloutScores
from metis.data.rl_prompts import route_verifier
from metis.core.task import Task
from metis.io.chat_client import JudgeUnavailable
from metis.io.judge import LLMJudge


def judge(url: str, **kw) -> LLMJudge:
    kw.setdefault("max_retries", 1)
    return LLMJudge(url, "judge-model", api_key_env=None, trust_env=False, backoff_s=0.01, timeout_s=10.0, **kw)


def rollout(answer, truth, verifier, group=0, question="<image>Q?", source="s", calls=0):
    task = Task(id=f"t{group}", question=question, images=[], answer=truth, verifier=verifier, data_source=source)
    text = f"<reason>r</reason><answer>{answer}</answer>" if answer is not None else "<reason>r</reason>"
    return SimpleNamespace(task=task, final_answer=answer, response_text=text, num_tool_calls=calls, group_id=group)


@pytest.fixture
def server():
    servers = []

    def start(**kw):
        servers.append(VerdictServer(**kw))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_route_verifier_exact_then_glob_then_ability():
    routes = {"geo_math": "math", "*choice*": "multiple_choice", "search": "judge"}
    assert route_verifier("geo_math", "perception", routes, "exact") == "math"
    assert route_verifier("mmstar_multiple_choice", None, routes, "exact") == "multiple_choice"
    assert route_verifier("fvqa", "search", routes, "exact") == "judge"  # by ability
    assert route_verifier("GEO_MATH_V2", None, {"*math*": "math"}, "exact") == "math"  # case-insensitive glob
    assert route_verifier("other", "vqa", routes, "exact") is None  # the caller uses the default and warns


def test_deterministic_verifiers_by_task():
    trajs = [rollout("0.5", "$\\frac{1}{2}$", "math"), rollout("\\boxed{9}", "$ 9 $", "math"),
             rollout("C, A", "A, C", "multiple_choice"), rollout("A", "A, C", "multiple_choice"),
             rollout("(B)", "B", "multiple_choice"), rollout("Paris.", "paris", "exact"),
             rollout("1,234 m", "1234", "numeric"), rollout(None, "4", "math")]
    batch = Scorer().score(trajs)
    assert batch.scores.r_ans.tolist() == [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert all(batch.scored) and batch.metrics == {"reward/unscored": 0.0}


def test_judge_task_without_a_configured_judge_stops_naming_the_key():
    with pytest.raises(ValueError, match="scoring.judge"):
        Scorer().score([rollout("x", "y", "judge")])


def test_judge_calls_run_concurrently_once_per_distinct_check(server):
    srv = server(barrier_n=2)  # the first two checks must be in flight together
    scorer = Scorer(judge(srv.url), judge_workers=4)
    trajs = [rollout("42", "42", "judge", group=0, question="<image>Q0"),
             rollout("41", "42", "judge", group=0, question="<image>Q0"),
             rollout("42", "42", "judge", group=0, question="<image>Q0"),  # same check as the first
             rollout("42", ["7", "42"], "judge", group=1, question="<image>Q1"),  # max over truths
             rollout(None, "42", "judge", group=1)]  # no answer: wrong without a request
    batch = scorer.score(trajs)
    assert batch.scores.r_ans.tolist() == [1.0, 0.0, 1.0, 1.0, 0.0] and all(batch.scored)
    assert batch.metrics["reward/judge_calls"] == 3.0 and batch.metrics["reward/judge_failures"] == 0.0
    assert batch.metrics["reward/judge_latency_p95"] > 0.0
    assert all("<image>" not in p and "Question: Q" in p for p in srv.judged)
    n = len(srv.judged)
    again = scorer.score(trajs[:2])  # the judge's cache answers repeats across steps
    assert again.metrics["reward/judge_cache_hits"] == 2.0 and len(srv.judged) == n


def test_outage_leaves_rollouts_unscored_not_wrong_and_stops_above_the_threshold(server):
    srv = server(fail_on=("Q1",))
    scorer = Scorer(judge(srv.url), max_unscored_frac=0.5, min_scored_per_group=2)
    trajs = ([rollout("42", "42", "judge", group=0, question="Q0") for _ in range(3)]
             + [rollout("41", "42", "judge", group=1, question="Q1"), rollout("42", "42", "judge", group=1, question="Q1")]
             + [rollout("42", "42", "judge", group=2, question="Q2"), rollout("9", "42", "judge", group=2, question="Q1"),
                rollout("8", "42", "judge", group=2, question="Q2")])
    batch = scorer.score(trajs)
    assert batch.scored == [True, True, True, False, False, True, False, True]
    assert batch.metrics["reward/judge_failures"] == 3.0 and batch.metrics["reward/unscored"] == 3.0
    # group 1 has no scored member; group 2 keeps its two scored rollouts; nothing unscored trains
    assert scorer.update_indices(batch) == [0, 1, 2, 5, 7]
    scorer.check_unscored(batch)  # 3/8 <= 0.5: the run goes on
    srv.down = True
    down = scorer.score([rollout("5", "42", "judge", group=g, question=f"Q{g}x") for g in range(4)])
    assert not any(down.scored) and scorer.update_indices(down) == []
    with pytest.raises(UnscoredStepError, match=srv.url.replace(".", r"\.")):
        scorer.check_unscored(down)


def test_probe_fails_fast_on_a_down_endpoint(server):
    srv = server()
    url = srv.url
    Scorer(judge(url))  # answers: fine
    srv.close()
    with pytest.raises(JudgeUnavailable, match="127.0.0.1"):
        Scorer(judge(url))


def test_scheme_runs_over_the_kept_rollouts_and_the_rest_get_zero_advantage():
    scores = RolloutScores(r_ans=[1, 0, 1, 0, 1, 0], r_fmt=[1] * 6, num_tool_calls=[0, 1, 2, 0, 0, 1],
                           group_ids=[0, 0, 0, 0, 1, 1])
    batch = ScoredBatch(scores=scores, scored=[True, True, True, False, True, False])
    scorer = Scorer(min_scored_per_group=2)
    keep = scorer.update_indices(batch)
    assert keep == [0, 1, 2]  # group 1 keeps one scored rollout: too few, dropped
    scheme = RewardScheme("hdpo")
    full, kept = scheme_over_kept(scheme, batch, keep)
    alone = scheme.compute(subset_scores(scores, keep))
    for ch, ref in zip(full.channels, alone.channels):
        assert ch.advantages[:3].tolist() == ref.advantages.tolist() and ch.advantages[3:].abs().sum() == 0
    assert kept is not None and len(full) == 6
    none, _ = scheme_over_kept(scheme, batch, [])
    assert all(float(c.advantages.abs().sum()) == 0 for c in none.channels)
