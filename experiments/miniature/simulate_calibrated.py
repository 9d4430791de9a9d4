"""What the scheme simulator predicts for the calibrated cold start, under the same decision rules.

    python experiments/miniature/simulate_calibrated.py [--candidate sft_450_noise50]

Turns the chosen cold start's gate samples (`calibration/<name>.csv`) into a two-class scenario of
the simulator (`metis.sim`): tool-unneeded and tool-needed prompts in equal shares, each with its
measured P(correct | no call) and P(correct | one call); the measured format-failure rate; and the
measured call rate as the start policy. It trains the sweep's arms there with the miniature's batch
(4 prompts x 4 rollouts) on 8 seeds, for 60 steps as the sweep and for 600 to show where the
dynamics head, applies `metis.analysis.claims.verdicts` to the simulated runs exactly as to the
real ones, and writes `decide/simulator.json` (plus the
simulator's own summary and curves in `decide/sim_<steps>/`).

Simplifications, stated so the comparison is read right:
- the success table is fixed: the simulated policy can raise accuracy only by choosing when to call,
  whereas the network can also unlearn the cold start's noisy answers and get better at reading;
- the policy is tabular, one row per class (it cannot tell prompts of a class apart, as the network
  cannot tell them apart before it looks), and starts at one call rate for both classes (their mean);
- its learning rate is the simulator's own (SGD, lr 2), so its step scale is not the network's: the
  order of events and the end state are the prediction, not the step numbers;
- correctness is measured with format failures included, and the format failures are drawn again
  independently (`fmt_fail_rate`), which slightly double counts them in the format reward.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

ARMS = {  # the sweep's arm -> the simulator's scheme entry (conf/reward/<name>.yaml plus parameters)
    "grpo": {"name": "grpo"},
    "hdpo_w0.15": {"name": "hdpo", "w_tool": 0.15},
    "coupled_a0.05": {"name": "coupled", "alpha": 0.05},
    "coupled_a3": {"name": "coupled", "alpha": 3.0},
    "penalty_l0.3": {"name": "coupled_penalty", "lam": 0.3},
}


def scenario_from_samples(samples: list[dict], name: str) -> tuple[dict, float]:
    """The two-class scenario mapping and the start call rate, from gate samples."""

    def rate(rows, key):
        return sum(r[key] for r in rows) / len(rows) if rows else float("nan")

    classes = []
    for cls, needs in (("unneeded", False), ("needed", True)):
        mine = [s for s in samples if s["needs_tool"] == needs]
        p0 = rate([s for s in mine if not s["called"]], "correct")
        p1 = rate([s for s in mine if s["called"]], "correct")
        if needs and p0 != p0:  # no uncalled sample: the no-tool guess
            p0 = 1 / 6
        classes.append({"name": cls, "weight": 0.5, "needs_tool": needs, "p": [round(p0, 4), round(p1, 4)],
                        "measured_call_rate": rate(mine, "called"), "samples": len(mine)})
    fmt_fail = 1.0 - rate(samples, "format_ok")
    call_rate = sum(c["measured_call_rate"] for c in classes) / len(classes)
    sim = {"name": f"calibrated_{name}", "kind": "classes", "t_max": 2, "policy": "per_class",
           "fmt_fail_rate": round(fmt_fail, 4), "ramp": None,
           "classes": [{k: c[k] for k in ("name", "weight", "needs_tool", "p")} for c in classes]}
    return {"sim": sim, "measured": classes}, call_rate


def simulated_runs(h, arm: str) -> list:
    """One ``Run`` per simulated seed: exact final rates; per-step curves from step 1 (rho_Q is sampled
    during updates, so step 0, the start policy, has none)."""
    from metis.analysis.claims import Run

    m = h.metrics
    runs = []
    for j, seed in enumerate(h.seeds):
        final = {"accuracy": float(m["accuracy"][-1, j]),
                 "accuracy_tool_needed": float(m["accuracy/needed"][-1, j]),
                 "accuracy_tool_unneeded": float(m["accuracy/unneeded"][-1, j]),
                 "necessary_tool_rate": float(m["necessary_tool_rate"][-1, j]),
                 "unnecessary_tool_rate": float(m["unnecessary_tool_rate"][-1, j])}
        n = m["accuracy"].shape[0]
        curves = {"step": list(range(1, n)), "accuracy": m["accuracy"][1:, j].tolist(),
                  "unnecessary_tool_rate": m["unnecessary_tool_rate"][1:, j].tolist(),
                  "rho_Q": [float(v) for v in m["rho_Q"][1:, j]]}
        runs.append(Run(arm, seed, final, curves))
    return runs


def main(argv=None) -> int:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from metis.analysis.claims import verdicts
    from metis.simulate import CONF_DIR, run_simulation

    sys.path.insert(0, str(HERE))
    from calibrate import read_samples

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidate", default=None, help="a calibration candidate's name (default: the chosen one)")
    p.add_argument("--calibration", default=str(HERE / "calibration.json"))
    p.add_argument("--out", default=str(HERE / "decide"))
    p.add_argument("--steps", type=int, nargs="+", default=[60, 600],
                   help="horizons: the miniature's 60 steps, then a long one that shows where the dynamics head")
    p.add_argument("--seeds", type=int, default=8)
    args = p.parse_args(argv)
    name = args.candidate or json.loads(Path(args.calibration).read_text())["chosen"]
    if not name:
        print("no chosen cold start in the calibration: nothing to simulate", file=sys.stderr)
        return 1
    samples = read_samples(HERE / "calibration" / f"{name}.csv")
    scen, call_rate = scenario_from_samples(samples, name)
    out = Path(args.out)
    horizons = {}
    for steps in args.steps:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="simulate", overrides=[
                f"num_seeds={args.seeds}", f"train.steps={steps}", "train.batch_items=4", "train.group_size=4",
                f"train.init_tool_call_rate={min(max(call_rate, 0.01), 0.99):.4f}", "report.per_seed_csv=false",
                "report.tail=5", "report.smooth=3", f"paths.output_dir={out / f'sim_{steps}'}"])
        with open_dict(cfg):
            cfg.sim = OmegaConf.create(scen["sim"])
            cfg.schemes = list(ARMS.values())
        res = run_simulation(cfg)
        label_to_arm = dict(zip(res["summary"]["scheme"], ARMS))  # resolve_schemes keeps the list's order
        runs = [run for h in res["histories"] for run in simulated_runs(h, label_to_arm[h.label])]
        v = verdicts(runs, "hdpo_w0.15", "coupled_a3", "coupled_a0.05")
        finals = {arm: {k: sum(r.final[k] for r in runs if r.arm == arm) / args.seeds for k in runs[0].final}
                  for arm in ARMS}
        horizons[str(steps)] = {"steps": steps, "final_mean": finals,
                                "verdicts": {k: x["verdict"] for k, x in v.items()}, "contrasts": v}
    first = horizons[str(args.steps[0])]
    doc = {"candidate": name, "scenario": scen, "start_call_rate": call_rate, "seeds": args.seeds,
           "batch": {"prompts": 4, "rollouts": 4}, "steps": args.steps[0], "final_mean": first["final_mean"],
           "verdicts": first["verdicts"], "horizons": horizons}
    (out / "simulator.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({k: h["verdicts"] for k, h in horizons.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
