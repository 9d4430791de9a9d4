"""Stages that sample a policy ``k`` times per sample: ``no_tool_solvable`` and ``rl_pass_rate``.

The policy is pluggable and built by Hydra (:class:`AgentPolicy`): the configured model
(``conf/model``), rollout engine (``conf/rollout``) and tools, driven by the project's one rollout
loop (:class:`metis.agent.loop.AgentLoop`). Tests swap only the engine for a scripted one; the
stage code is the same.

* ``no_tool_solvable`` (SFT trajectories): the question of each record (its first user turn and
  images) is answered ``k`` times with **no tools** (the system prompt lists none); a record is
  dropped (``solvable_without_tools``) when the pass rate is ``>= max_pass_rate`` (default 1.0: the
  paper's "pass@8 = 1", read as solved in every one of the k samples; a lower value, e.g.
  ``1/k``, drops anything solved at least once).
* ``rl_pass_rate`` (RL prompts): ``k`` rollouts **with tools**; kept when
  ``min_pass_rate < pass rate < max_pass_rate`` (strict; reasons ``always_solved`` /
  ``never_solved``). The report gives the category mix (perception / search / math) before and
  after, next to the paper's 45 / 36 / 19 %.

Correctness is the deterministic verifier named by the record (``meta["verifier"]``) or the stage's
``default_verifier``, scored against the record's ground truths. A layout without an answer column
(DeepEyesV2, Thyme) has the trajectory's own final answer as ground truth (the converter marks it
``meta["ground_truth_from"] = "final_answer"``; the report counts them); a record with neither is
never scored: it gets an ``error`` row ``no_ground_truth``.

Deliberate simplifications: no LLM judge for answers here (verifiers only); a prompt the loop
cannot start (too long, broken image) is reported as bad input; the policy is put in eval mode.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from metis.data.samples import CATEGORIES, Sample, category_of
from metis.curation.runner import Stage

PAPER_RL_MIX = {"perception": 0.45, "search": 0.36, "math": 0.19}


class AgentPolicy:
    """Model + engine + tools + :class:`AgentLoop`, built lazily from Hydra configs (or objects)."""

    def __init__(self, model: Any, engine: Any, loop: Any, tools: Any, greedy: bool = False,
                 device: str = "auto", processor: Any = None) -> None:
        self.model_cfg, self.engine_cfg, self.loop_cfg, self.tools_cfg = model, engine, loop, tools
        self.greedy, self.device, self.processor = greedy, device, processor
        self.loop: Any = None
        self.toolbox: Any = None

    def open(self) -> None:
        if self.loop is not None:
            return
        import hydra
        import torch

        from metis.agent.loop import AgentLoop

        def build(cfg: Any) -> Any:
            return hydra.utils.instantiate(cfg) if hasattr(cfg, "keys") else cfg

        if self.processor is None:  # model given as a config: build (model, processor)
            model, self.processor = build(self.model_cfg)
        else:
            model = self.model_cfg
        if model is not None:
            device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
            model.to(device).eval()
        engine = build(self.engine_cfg)
        engine.bind(model, self.processor)
        self.toolbox = build(self.tools_cfg)
        self.loop = AgentLoop(engine, self.toolbox, self.processor, build(self.loop_cfg))

    def run(self, tasks: list[Any], n: int) -> tuple[list[Any], list[dict[str, str]]]:
        """``n`` rollouts per task; also the tasks the loop skipped (with the reason)."""
        self.open()
        before = len(self.loop.skipped)
        trajs = self.loop.run(tasks, n=n, greedy=self.greedy)
        return trajs, self.loop.skipped[before:]

    def close(self) -> None:
        if self.toolbox is not None and hasattr(self.toolbox, "close"):
            self.toolbox.close()
        self.loop = self.toolbox = None


def task_for(sample: Sample, default_verifier: str) -> Any:
    """The prompt of a record as a :class:`metis.core.task.Task` (verifier and category set)."""
    from metis.data.rollout_records import task_from_record

    rec = sample.record
    task = task_from_record(rec)
    task.verifier = str(rec.meta.get("verifier") or default_verifier)
    task.category = str(rec.meta.get("category") or category_of(rec.meta.get("ability"), rec.source))
    task.needs_tool = rec.meta.get("needs_tool")
    return task


class _PassRateStage(Stage):
    atomic_batches = True  # sampled rollouts of a batch depend on each other: redo whole batches

    def __init__(self, policy: Any, k: int = 8, default_verifier: str = "exact") -> None:
        from metis.rl.verifiers import VERIFIERS

        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        VERIFIERS.get(default_verifier)
        self.policy_cfg, self.k, self.default_verifier = policy, int(k), default_verifier
        self.policy: Any = None

    def open(self) -> None:
        import hydra

        if self.policy is None:
            self.policy = self.policy_cfg if hasattr(self.policy_cfg, "run") else hydra.utils.instantiate(self.policy_cfg)
        self.policy.open()

    def close(self) -> None:
        if self.policy is not None:
            self.policy.close()

    def rollouts(self, samples: list[Sample]) -> dict[str, dict[str, Any]]:
        """Per sample id: pass rate, tool calls, answers, category; or ``{"skipped": reason}``."""
        from metis.rl.verifiers import VERIFIERS

        tasks = [task_for(s, self.default_verifier) for s in samples]
        trajs, skipped = self.policy.run(tasks, self.k)
        out: dict[str, dict[str, Any]] = {t.id: {"scores": [], "tool_calls": [], "answers": [], "category": t.category}
                                          for t in tasks}
        for s in skipped:
            out[s["task_id"]]["skipped"] = s["error"]
        for traj in trajs:
            task = traj.task
            score = VERIFIERS.get(task.verifier)(traj.final_answer, task.answer)
            entry = out[task.id]
            entry["scores"].append(float(score))
            entry["tool_calls"].append(int(traj.num_tool_calls))
            entry["answers"].append(traj.final_answer)
        for entry in out.values():
            if "skipped" not in entry and entry["scores"]:
                entry["pass_rate"] = sum(entry["scores"]) / len(entry["scores"])
        return out

    def verdict(self, pass_rate: float) -> str | None:
        """The drop reason for a prompt with this pass rate (``None``: keep)."""
        raise NotImplementedError

    def process(self, samples: list[Sample]) -> list[dict[str, Any]]:
        scorable = [s for s in samples if s.record.ground_truth]
        results = self.rollouts(scorable) if scorable else {}
        rows = []
        for s in samples:
            if s.id not in results:  # never scored against nothing (every verifier would say 0)
                rows.append({"id": s.id, "status": "error", "reason": "no_ground_truth",
                             "details": {"detail": "no answer column and no final <answer> in the trajectory"}})
                continue
            entry = results[s.id]
            if "skipped" in entry:
                rows.append({"id": s.id, "status": "error", "reason": "rollout_failed",
                             "details": {"detail": entry["skipped"][:300], "category": entry["category"]}})
                continue
            reason = self.verdict(entry["pass_rate"])
            details = {**self._details(entry), "ground_truth_from": s.record.meta.get("ground_truth_from", "data")}
            rows.append({"id": s.id, "status": "dropped" if reason else "kept", "reason": reason, "details": details})
        return rows

    def _details(self, entry: dict[str, Any]) -> dict[str, Any]:
        calls = entry["tool_calls"]
        return {"k": self.k, "pass_rate": round(entry.get("pass_rate", 0.0), 6), "correct": sum(entry["scores"]),
                "mean_tool_calls": round(sum(calls) / max(len(calls), 1), 4), "category": entry["category"],
                "answers": [a if a is None else str(a)[:80] for a in entry["answers"][:8]]}


class NoToolSolvableStage(_PassRateStage):
    """Drop SFT samples the base model already solves without tools."""

    name = "no_tool_solvable"
    reasons = {"solvable_without_tools": "the base model answers it without tools in >= max_pass_rate of k samples",
               "rollout_failed": "the rollout loop could not start the prompt (too long, broken image)",
               "no_ground_truth": "no answer column and no final <answer> to score against (retried on rerun)"}

    def __init__(self, policy: Any, k: int = 8, max_pass_rate: float = 1.0, default_verifier: str = "exact") -> None:
        super().__init__(policy, k, default_verifier)
        self.max_pass_rate = float(max_pass_rate)

    def describe(self) -> dict[str, Any]:
        return {"k": self.k, "max_pass_rate": self.max_pass_rate, "default_verifier": self.default_verifier}

    def verdict(self, pass_rate: float) -> str | None:
        return "solvable_without_tools" if pass_rate >= self.max_pass_rate else None

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        own = sum(1 for r in rows if (r.get("details") or {}).get("ground_truth_from") == "final_answer")
        return {"metrics": {"ground_truth_from_final_answer": own}}


class RLPassRateStage(_PassRateStage):
    """Keep RL prompts whose pass rate over k rollouts (with tools) is strictly inside the bounds."""

    name = "rl_pass_rate"
    input_trajectories = False  # verl rows, prompt-only records or trajectories (their prompt)
    reasons = {"always_solved": "pass rate >= max_pass_rate (no learning signal)",
               "never_solved": "pass rate <= min_pass_rate (no learning signal)",
               "rollout_failed": "the rollout loop could not start the prompt (too long, broken image)"}

    def __init__(self, policy: Any, k: int = 8, min_pass_rate: float = 0.0, max_pass_rate: float = 1.0,
                 default_verifier: str = "exact") -> None:
        super().__init__(policy, k, default_verifier)
        if not min_pass_rate < max_pass_rate:
            raise ValueError(f"need min_pass_rate < max_pass_rate, got {min_pass_rate} and {max_pass_rate}")
        self.min_pass_rate, self.max_pass_rate = float(min_pass_rate), float(max_pass_rate)

    def describe(self) -> dict[str, Any]:
        return {"k": self.k, "min_pass_rate": self.min_pass_rate, "max_pass_rate": self.max_pass_rate,
                "default_verifier": self.default_verifier}

    def verdict(self, pass_rate: float) -> str | None:
        if pass_rate >= self.max_pass_rate:
            return "always_solved"
        return "never_solved" if pass_rate <= self.min_pass_rate else None

    def annotate(self, record: Any, row: dict[str, Any]) -> Any:
        record = super().annotate(record, row)
        record.meta = {**record.meta, "pass_rate": row["details"]["pass_rate"], f"pass{self.k}": row["details"]["pass_rate"],
                       "category": row["details"]["category"]}
        return record

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        done = [r for r in rows if r["status"] in ("kept", "dropped")]
        seen = Counter(r["details"].get("category", "?") for r in done)
        kept = Counter(r["details"].get("category", "?") for r in done if r["status"] == "kept")
        n_kept = max(sum(kept.values()), 1)
        lines = ["| category | in | kept | kept share | paper share |", "| --- | ---: | ---: | ---: | ---: |"]
        metrics: dict[str, float] = {}
        for cat in list(CATEGORIES) + sorted(set(seen) - set(CATEGORIES)):
            share = kept[cat] / n_kept
            metrics[f"mix/{cat}"] = round(share, 4)
            paper = f"{PAPER_RL_MIX[cat]:.0%}" if cat in PAPER_RL_MIX else "-"
            lines.append(f"| {cat} | {seen[cat]} | {kept[cat]} | {share:.1%} | {paper} |")
        rates = [r["details"]["pass_rate"] for r in done if r["status"] == "kept"]
        if rates:
            metrics["kept_mean_pass_rate"] = round(sum(rates) / len(rates), 4)
        return {"metrics": metrics, "sections": {"Mix by category (kept prompts)": "\n".join(lines)},
                "by_category": {c: {"in": seen[c], "kept": kept[c]} for c in seen}}
