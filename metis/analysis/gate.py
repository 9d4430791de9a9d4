"""The calibration gate a cold start must pass before the deciding RL sweep.

A cold start that is right on nearly every sampled rollout makes most groups all-correct; group
normalisation then removes the coupling weight from the coupled rewards and every arm reaches
the same policy (what the first miniature sweep measured). The gate asks for a cold start that
is trigger-happy, often wrong, and genuinely helped by its tool, measured by sampling at T = 1
(k samples per held-out prompt), before any RL run. Thresholds: ``GATE``; they are stated in
``experiments/miniature/DECISION_RULES.md`` and change only together with it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

GATE = {
    "format_rate_min": 0.8,            # the tags are there, so rewards measure answers, not format
    "unnecessary_call_rate_min": 0.5,  # trigger-happy: calls on most tool-unneeded samples
    "accuracy_min": 0.3,               # often wrong: groups of mixed correctness are common ...
    "accuracy_max": 0.6,               # ... but not hopeless
    "tool_gain_min": 1.3,              # tool-needed accuracy >= 1.3 x the no-tool guess
    "all_correct_unneeded_max": 0.10,  # at most 10 % of tool-unneeded prompts have all k samples right
}


def gate_metrics(samples: Sequence[Mapping], no_tool_guess: float) -> dict[str, float]:
    """Gate quantities from sampled rollouts ``{prompt_id, needs_tool, correct, called, format_ok}``.

    ``no_tool_guess``: tool-needed accuracy without the tool (the no-tool control's, or chance)."""
    by_prompt: dict[str, list[Mapping]] = defaultdict(list)
    for s in samples:
        by_prompt[str(s["prompt_id"])].append(s)

    def rate(rows, key):
        return sum(float(r[key]) for r in rows) / len(rows) if rows else float("nan")

    needed = [s for s in samples if s["needs_tool"]]
    unneeded = [s for s in samples if not s["needs_tool"]]
    unneeded_prompts = [rows for rows in by_prompt.values() if not rows[0]["needs_tool"]]
    acc_needed = rate(needed, "correct")
    return {
        "n_samples": float(len(samples)),
        "n_prompts": float(len(by_prompt)),
        "format_rate": rate(samples, "format_ok"),
        "accuracy": rate(samples, "correct"),
        "accuracy_tool_needed": acc_needed,
        "accuracy_tool_unneeded": rate(unneeded, "correct"),
        "unnecessary_call_rate": rate(unneeded, "called"),
        "necessary_call_rate": rate(needed, "called"),
        "no_tool_guess": float(no_tool_guess),
        "tool_gain": acc_needed / no_tool_guess if no_tool_guess > 0 else float("inf"),
        "all_correct_unneeded": (sum(all(r["correct"] for r in rows) for rows in unneeded_prompts)
                                 / len(unneeded_prompts)) if unneeded_prompts else float("nan"),
    }


def gate_verdict(m: Mapping[str, float]) -> dict[str, bool]:
    """Each gate condition (True = passed) and ``passed`` for all of them."""
    checks = {
        "format_rate": m["format_rate"] >= GATE["format_rate_min"],
        "unnecessary_call_rate": m["unnecessary_call_rate"] >= GATE["unnecessary_call_rate_min"],
        "accuracy": GATE["accuracy_min"] <= m["accuracy"] <= GATE["accuracy_max"],
        "tool_gain": m["tool_gain"] >= GATE["tool_gain_min"],
        "all_correct_unneeded": m["all_correct_unneeded"] <= GATE["all_correct_unneeded_max"],
    }
    return checks | {"passed": all(checks.values())}
