"""Greedy held-out evaluation of a policy on the miniature task splits (the SFT cold start and the
no-tool control arm), with the training code's agent loop, scoring and metrics.

    python experiments/miniature/eval_policy.py --init-from <run>/hf [--tools python_only|none]
        [--split val|test] [--n 32] [--samples K] [--out metrics.json]

Prints and writes {"accuracy", "accuracy_tool_needed", "accuracy_tool_unneeded",
"unnecessary_tool_rate", "necessary_tool_rate", "mean_tool_calls", ...} (metis.agent.metrics).
With --tools none the system prompt lists no tools and any call is answered by an error
observation, so every correct answer was produced without a tool. With --samples K (K >= 1) each
prompt is sampled K times at the training temperature instead of once greedily (the deciding
sweep's primary endpoint and the cold-start gate); the per-sample file then also holds
``prompt_id``, ``correct``, ``called`` and ``format_ok`` for ``metis.analysis.gate``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--init-from", required=True)
    p.add_argument("--tools", default="python_only")
    p.add_argument("--split", default="val")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--samples", type=int, default=0, help="K > 0: sample K rollouts per prompt at T = 1")
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    out_dir = Path(args.out).parent if args.out else Path("/tmp")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "experiment=miniature/hdpo_w0.15", f"model.init_from={args.init_from}", f"tools={args.tools}",
            f"paths.output_dir={out_dir}", "module.rollout_log_dir=null", *args.overrides])
    import torch

    from metis.agent.metrics import rollout_metrics
    from metis.modules.rl import RLModule

    torch.manual_seed(cfg.seed)
    model, processor = hydra.utils.instantiate(cfg.model)
    model.eval()
    tasks = hydra.utils.instantiate(cfg.data.source)()[args.split][: args.n]
    module = hydra.utils.instantiate(cfg.module, model=model, processor=processor)
    with torch.no_grad():
        trajs = module.agent.run(tasks, n=max(args.samples, 1), greedy=args.samples < 1)
    scores = RLModule.score(trajs)
    metrics = rollout_metrics(trajs, scores, None)
    metrics |= {"n": len(trajs), "split": args.split, "tools": args.tools, "init_from": args.init_from,
                "samples": args.samples}
    print(json.dumps(metrics, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=1) + "\n")
        with open(Path(args.out).with_suffix(".jsonl"), "w") as fh:
            for i, t in enumerate(trajs):
                fh.write(json.dumps({"id": t.task.id, "prompt_id": t.task.id, "needs_tool": t.task.needs_tool,
                                     "answer": t.task.answer, "final_answer": t.final_answer,
                                     "tool_calls": t.num_tool_calls, "called": t.num_tool_calls > 0,
                                     "correct": bool(scores.r_ans[i] > 0), "format_ok": bool(scores.r_fmt[i] > 0),
                                     "response": t.response_text}) + "\n")
    module.toolbox.close()
    return metrics

if __name__ == "__main__":
    main(sys.argv[1:])
