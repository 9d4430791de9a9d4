"""Small-sample statistics for seeded RL experiments (pure functions over numbers).

The miniature's claims are decided on a handful of seeds, each evaluated on a few dozen
prompts with several samples per prompt. Three kinds of uncertainty follow, each with its tool:

- per-seed summaries (one number per seed, e.g. the final unnecessary-tool rate): Student-t
  intervals, and paired differences between two arms run with the same seeds;
- rollout-level rates (0/1 outcomes nested in prompts nested in seeds): a two-level cluster
  bootstrap that resamples seeds, then prompts within each seed, so that neither level is
  treated as independent draws;
- rare events across runs (a collapse of the needed calls): Fisher's exact test on the counts.

Several primary contrasts are corrected together with Holm's step-down method.

Simplifications: intervals are two-sided at ``level``; the bootstrap uses percentile intervals;
p-values of paired contrasts are one-sided t-tests of "difference > 0" (the direction each claim
predicts). With fewer than two seeds an interval is infinite rather than invented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as _st


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval; ``n`` is the number of independent units."""

    mean: float
    lo: float
    hi: float
    n: int

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def t_interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Mean and Student-t interval of independent values (e.g. one per seed); NaNs are dropped."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    n = len(x)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, -math.inf, math.inf, n)
    half = float(_st.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, n)


def one_sample(values: Sequence[float], level: float = 0.95) -> tuple[Interval, float]:
    """t-interval of ``values`` and the one-sided p-value of "mean > 0" (NaN below two values)."""
    ci = t_interval(values, level)
    if ci.n < 2:
        return ci, float("nan")
    x = [v for v in values if v is not None and not math.isnan(v)]
    if float(np.std(x, ddof=1)) <= 1e-12 * max(1.0, abs(ci.mean)):  # no spread: the sign of the mean decides
        return ci, 0.0 if ci.mean > 0 else 1.0
    return ci, float(_st.ttest_1samp(x, 0.0, alternative="greater").pvalue)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> tuple[Interval, float]:
    """``a - b`` over the seeds both arms ran: its t-interval and the one-sided p-value of "a - b > 0".

    Pairing by seed removes what the seeds share (the cold start's sampling, the prompt order)."""
    seeds = sorted(set(a) & set(b))
    return one_sample([float(a[s]) - float(b[s]) for s in seeds], level)


def cluster_bootstrap(outcomes: Mapping[int, Mapping[str, Sequence[float]]], n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> Interval:
    """Rate of rollout-level outcomes ``{seed: {prompt_id: [0/1 per sample]}}`` with a two-level
    cluster bootstrap (seeds, then prompts within each drawn seed).

    The point estimate weights every seed equally and every prompt within a seed equally."""
    rng = np.random.default_rng(seed)
    per_seed = [[np.asarray(v, dtype=np.float64).mean() for v in prompts.values() if len(v)]
                for prompts in outcomes.values()]
    per_seed = [np.asarray(p) for p in per_seed if len(p)]
    if not per_seed:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    point = float(np.mean([p.mean() for p in per_seed]))
    k = len(per_seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        chosen = rng.integers(0, k, size=k)
        draws[b] = np.mean([per_seed[i][rng.integers(0, len(per_seed[i]), size=len(per_seed[i]))].mean()
                            for i in chosen])
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(point, float(lo), float(hi), k)


def cluster_bootstrap_difference(a: Mapping[int, Mapping[str, Sequence[float]]],
                                 b: Mapping[int, Mapping[str, Sequence[float]]], n_boot: int = 2000,
                                 level: float = 0.95, seed: int = 0) -> Interval:
    """``rate(a) - rate(b)`` paired by seed and prompt: each draw takes the same seeds and, within a
    seed, the same prompts for both arms (prompts missing from either arm are left out)."""
    rng = np.random.default_rng(seed)
    seeds = sorted(set(a) & set(b))
    pairs = []
    for s in seeds:
        ids = sorted(set(a[s]) & set(b[s]))
        ids = [i for i in ids if len(a[s][i]) and len(b[s][i])]
        if ids:
            pairs.append((np.asarray([np.mean(a[s][i]) for i in ids]), np.asarray([np.mean(b[s][i]) for i in ids])))
    if not pairs:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    point = float(np.mean([pa.mean() - pb.mean() for pa, pb in pairs]))
    k = len(pairs)
    draws = np.empty(n_boot)
    for j in range(n_boot):
        vals = []
        for i in rng.integers(0, k, size=k):
            pa, pb = pairs[i]
            idx = rng.integers(0, len(pa), size=len(pa))
            vals.append(pa[idx].mean() - pb[idx].mean())
        draws[j] = np.mean(vals)
    lo, hi = np.quantile(draws, [0.5 - level / 2, 0.5 + level / 2])
    return Interval(point, float(lo), float(hi), k)


def fisher_exact(events_a: int, runs_a: int, events_b: int, runs_b: int, alternative: str = "greater") -> float:
    """p-value that event rate a exceeds rate b (``alternative="greater"``) or differs ("two-sided"):
    e.g. collapses of the needed calls in 4 coupled runs against 4 HDPO runs."""
    table = [[events_a, runs_a - events_a], [events_b, runs_b - events_b]]
    return float(_st.fisher_exact(table, alternative=alternative).pvalue)


def holm(pvalues: Mapping[str, float]) -> dict[str, float]:
    """Holm–Bonferroni adjusted p-values (monotone, capped at 1); NaN p-values stay NaN."""
    named = sorted(((p, k) for k, p in pvalues.items() if not math.isnan(p)))
    m = len(named)
    out: dict[str, float] = {k: float("nan") for k, p in pvalues.items() if math.isnan(p)}
    running = 0.0
    for i, (p, k) in enumerate(named):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def halfway_step(steps: Sequence[float], values: Sequence[float], window: int = 3) -> float:
    """First step at which a curve, smoothed by a trailing mean over ``window`` points, has covered
    half the way from its start (mean of the first ``window`` points) to its end (mean of the
    last ``window``); NaN when the curve does not move."""
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float("nan")
    w = max(1, min(window, len(v) // 2))
    start, end = v[:w].mean(), v[-w:].mean()
    if start == end:
        return float("nan")
    smooth = np.convolve(v, np.ones(w) / w, mode="full")[: len(v)]
    smooth[: w - 1] = [v[: i + 1].mean() for i in range(w - 1)]
    half = start + (end - start) / 2
    crossed = (smooth - half) * np.sign(end - start) >= 0
    return float(s[int(np.argmax(crossed))]) if crossed.any() else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation; NaN when either side is constant or fewer than 3 points."""
    if len(x) < 3 or np.ptp(np.asarray(x, dtype=float)) == 0 or np.ptp(np.asarray(y, dtype=float)) == 0:
        return float("nan")
    return float(_st.spearmanr(x, y).statistic)
