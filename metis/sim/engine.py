"""The simulator: a tabular softmax policy over T in {0..t_max} tool calls trained with a reward
scheme of the registry, several seeds side by side.

One step, per seed: draw `batch_items` units, G = `group_size` rollouts each, T ~ pi(row of the
unit), correct ~ Bernoulli(p[unit, T]), r_fmt ~ Bernoulli(1 - fmt_fail_rate); build
`RolloutScores`; `RewardScheme.compute` gives the advantage channels; `PolicyLoss` gives the
loss over the per-rollout log-prob of the sampled T (one "token" per rollout, old_logprobs =
logprobs.detach(), so ratio = 1 and the dual-clip PPO term is exactly a policy gradient with the
scheme's advantages, HDPO's tool term averaged over the rollouts with A_tool != 0 only). The
seeds' losses are summed (their logits are disjoint, so each seed gets its own gradient) and one
optimiser step is taken.

Metrics are exact functions of the policy (no sampling): accuracy, tool-call rates, mean T,
overall and per reporting class. rho_Q and the other scheme metrics are the *sampled batch*
values of the step's `AdvantageResult.metrics`.

Deliberate simplifications:
- one update per batch (1 PPO epoch, one mini-batch), so the PPO ratio is always 1 and clipping
  never acts; no KL, no entropy bonus (unless the loss config sets them: they then need inputs the
  simulator does not provide and raise);
- items are drawn with replacement; a unit drawn twice forms two groups;
- each seed has its own torch.Generator, so a seed's run is the same whether it runs alone or
  with others (the optimisers are element-wise: Adam and SGD);
- Adam keeps moving rows that were not in the batch (momentum), as it would in a real network;
- `nonzero_only: false` is an ablation switch, not a scheme: it clears the `nonzero_only` flag of
  every channel the scheme returns, so e.g. HDPO's tool term is averaged over all rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from metis.rl.scheme import PolicyLoss, RewardScheme
from metis.rl.types import AdvantageResult, RolloutScores
from metis.sim.scenario import Scenario

OPTIMIZERS = ("sgd", "adam")
SAMPLED_METRICS = ("rho_Q", "frac_reward_zero_std", "efficiency_active_groups", "frac_correct", "mean_tool_calls")


@dataclass
class SimConfig:
    """Training knobs of the simulator (conf/simulate.yaml `train:`)."""

    steps: int = 300
    batch_items: int = 32
    group_size: int = 16
    optimizer: str = "sgd"
    lr: float = 2.0
    init_tool_call_rate: float = 0.95   # start policy: P(T > 0)
    init_call_decay: float = 0.5   # P(T = t | T > 0) proportional to decay ** (t - 1)
    nonzero_only: bool = True      # False: ablation, every channel averaged over all rollouts

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for key in ("steps", "batch_items", "group_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)!r}")
        if not 0.0 < self.init_tool_call_rate < 1.0:
            raise ValueError(f"train.init_tool_call_rate must lie in (0, 1), got {self.init_tool_call_rate!r}")
        if self.init_call_decay <= 0 or self.lr <= 0:
            raise ValueError("train.init_call_decay and train.lr must be > 0")


@dataclass
class Batch:
    """The rollouts of one seed at one step (what the training code would score)."""

    units: Tensor          # [B] unit of each group
    scores: RolloutScores  # N = B * G rollouts, group g = rollouts g*G .. g*G + G - 1
    rows: Tensor           # [N] logits row of each rollout
    result: AdvantageResult


@dataclass
class History:
    """Per-step metrics, each an array [steps + 1, num_seeds].

    Row t of an exact metric: the policy after t updates (row 0: the start policy). Row t of a
    sampled metric: the batch used for update t (row 0 is NaN).
    """

    label: str
    seeds: list[int]
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    optimal_accuracy: float = float("nan")


def initial_logits(cfg: SimConfig, t_max: int) -> Tensor:
    """Log-probs of the trigger-happy start policy over T = 0..t_max."""
    t = torch.arange(1, t_max + 1, dtype=torch.float64)
    tail = cfg.init_call_decay ** (t - 1)
    probs = torch.cat([torch.tensor([1.0 - cfg.init_tool_call_rate], dtype=torch.float64),
                       cfg.init_tool_call_rate * tail / tail.sum()])
    return probs.log().float()


class Simulator:
    """Tabular policies of several seeds trained with one reward scheme on one scenario."""

    def __init__(self, scenario: Scenario, scheme: RewardScheme, objective: PolicyLoss,
                 cfg: SimConfig, seeds: Sequence[int]) -> None:
        if not seeds:
            raise ValueError("need at least one seed")
        self.scenario, self.scheme, self.objective, self.cfg = scenario, scheme, objective, cfg
        self.seeds = [int(s) for s in seeds]
        init = initial_logits(cfg, scenario.t_max)
        self.logits = torch.nn.Parameter(init.expand(len(self.seeds), scenario.num_rows, -1).clone())
        opt_cls = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
        self.opt = opt_cls([self.logits], lr=cfg.lr)
        self.gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        n = cfg.batch_items * cfg.group_size
        self.group_ids = torch.arange(cfg.batch_items).repeat_interleave(cfg.group_size)
        self._index = torch.arange(n)
        self._mask = torch.ones(n, 1)
        self.step_count = 0

    # ------------------------------------------------------------------ sampling and one update
    def sample(self, seed_index: int, probs: Tensor, success: Tensor) -> tuple[Tensor, Tensor, RolloutScores]:
        """(units [B], rows [N], scores) of one seed's batch from detached probs [R, T+1]."""
        g, c, sc = self.gens[seed_index], self.cfg, self.scenario
        units = torch.multinomial(sc.weights, c.batch_items, replacement=True, generator=g)
        rows = sc.policy_row[units]
        t = torch.multinomial(probs[rows], c.group_size, replacement=True, generator=g)  # [B, G]
        p = success[units].gather(1, t)
        correct = torch.rand(p.shape, generator=g, dtype=torch.float64) < p
        fmt = torch.rand(p.shape, generator=g) >= sc.fmt_fail_rate
        scores = RolloutScores(r_ans=correct.reshape(-1).float(), r_fmt=fmt.reshape(-1).float(),
                               num_tool_calls=t.reshape(-1), group_ids=self.group_ids)
        return units, rows.repeat_interleave(c.group_size), scores

    def step(self) -> list[Batch]:
        """Sample every seed's batch, compute advantages and the loss, take one optimiser step."""
        success = self.scenario.success(self.step_count)
        logp_all = torch.log_softmax(self.logits, dim=-1)  # [S, R, T+1]
        probs = logp_all.detach().exp()
        total: Tensor | None = None
        batches: list[Batch] = []
        for s in range(len(self.seeds)):
            units, rows, scores = self.sample(s, probs[s], success)
            result = self.scheme.compute(scores)
            if not self.cfg.nonzero_only:
                for ch in result.channels:
                    ch.nonzero_only = False
            lp = logp_all[s, rows, scores.num_tool_calls].unsqueeze(-1)  # [N, 1]: one token per rollout
            loss, _ = self.objective(lp, lp.detach(), self._mask, result, self._index)
            total = loss if total is None else total + loss
            batches.append(Batch(units=units, scores=scores, rows=rows, result=result))
        assert total is not None
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        self.step_count += 1
        return batches

    # ------------------------------------------------------------------ exact metrics
    def policy_probs(self) -> Tensor:
        """pi[s, k, T] for every seed and unit (float64, detached)."""
        return torch.softmax(self.logits.detach().double(), dim=-1)[:, self.scenario.policy_row]

    def exact_metrics(self) -> dict[str, Tensor]:
        """Exact metrics of the current policy, each a [S] tensor (see module docstring)."""
        sc = self.scenario
        pi = self.policy_probs()                       # [S, K, T+1]
        succ = sc.success(self.step_count)             # [K, T+1]
        t = torch.arange(sc.t_max + 1, dtype=torch.float64)
        acc_u = (pi * succ).sum(-1)                    # [S, K]
        tool_u = 1.0 - pi[..., 0]
        mean_t_u = (pi * t).sum(-1)
        w = sc.weights

        def wmean(v: Tensor, sel: Tensor) -> Tensor:
            ws = w * sel.double()
            return (v * ws).sum(-1) / ws.sum() if bool(sel.any()) else torch.full(v.shape[:1], float("nan"))

        every = torch.ones_like(sc.needs_tool)
        out = {
            "accuracy": wmean(acc_u, every),
            "unnecessary_tool_rate": wmean(tool_u, ~sc.needs_tool),
            "necessary_tool_rate": wmean(tool_u, sc.needs_tool),
            "tool_call_rate": wmean(tool_u, every),
            "mean_T": wmean(mean_t_u, every),
        }
        for c, name in enumerate(sc.class_names):
            sel = sc.unit_class == c
            out[f"accuracy/{name}"] = wmean(acc_u, sel)
            out[f"tool_call_rate/{name}"] = wmean(tool_u, sel)
            out[f"mean_T/{name}"] = wmean(mean_t_u, sel)
        return out

    # ------------------------------------------------------------------ a whole run
    def run(self, steps: int | None = None, label: str | None = None,
            on_step: Callable[[int, dict[str, np.ndarray]], None] | None = None) -> History:
        """Train for `steps` (default cfg.steps) updates; `on_step(t, row)` sees every row."""
        steps = self.cfg.steps if steps is None else int(steps)
        hist = History(label=label or self.scheme.name, seeds=list(self.seeds),
                       optimal_accuracy=self.scenario.optimal_accuracy(self.cfg.steps))
        rows: list[dict[str, np.ndarray]] = []
        nan = np.full(len(self.seeds), np.nan)
        first = {k: v.numpy() for k, v in self.exact_metrics().items()}
        first.update({k: nan for k in SAMPLED_METRICS})
        rows.append(first)
        if on_step:
            on_step(0, first)
        for t in range(1, steps + 1):
            batches = self.step()
            row = {k: v.numpy() for k, v in self.exact_metrics().items()}
            for k in SAMPLED_METRICS:
                row[k] = np.array([b.result.metrics.get(k, np.nan) for b in batches], dtype=np.float64)
            rows.append(row)
            if on_step:
                on_step(t, row)
        hist.metrics = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        return hist


def simulate(scenario: Scenario, scheme: RewardScheme, objective: PolicyLoss, cfg: SimConfig,
             seeds: Sequence[int], label: str | None = None) -> History:
    """Build a Simulator and run it for cfg.steps updates."""
    return Simulator(scenario, scheme, objective, cfg, seeds).run(label=label)
