"""Choose the cold start of the deciding sweep by the gate of DECISION_RULES.md, before any RL run.

    python experiments/miniature/calibrate.py [--candidates 200 300 ... 400:hard70] [--out runs/miniature_decide]

For each candidate (an SFT length, optionally with a data variant): train `miniature_sft` (unless
`<out>/calib/<name>/hf` exists), sample it (unless its samples exist) at T = 1 (4 samples on each of
the 64 val prompts), compute the gate quantities (`metis.analysis.gate`) and its verdict. Each
candidate's samples (the columns the gate reads) go to `calibration/<name>.csv` beside the record,
so every number can be recomputed. Writes `calibration.json` (every candidate, and the chosen one:
the first that passes, in the rules' order; later candidates are not trained) into `--out` and into `--record` (default: this folder).
With `--reuse-failed`, a candidate that failed in the existing `--record` is not trained again: its
gate is re-applied to its committed samples (`calibration/<name>.csv`), so a re-run of the deciding
command trains only the candidates the record has not ruled out (decide.sh passes it; leave it off to
re-measure every candidate from scratch).
Exit status 1 when no candidate passes. The no-tool guess is chance (1/6 for six colours) unless
`--no-tool-guess` gives the no-tool control's measured tool-needed accuracy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from metis.analysis.gate import GATE, gate_metrics, gate_verdict  # noqa: E402


SAMPLE_COLUMNS = ("prompt_id", "needs_tool", "called", "correct", "format_ok")


def write_samples(path: Path, samples: list[dict]) -> None:
    """One row per sample, the columns the gate reads: the committed trace of calibration.json."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SAMPLE_COLUMNS)
        for s in samples:
            w.writerow([s["prompt_id"], *(int(bool(s[k])) for k in SAMPLE_COLUMNS[1:])])


def read_samples(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return [{"prompt_id": r["prompt_id"], **{k: bool(int(r[k])) for k in SAMPLE_COLUMNS[1:]}}
                for r in csv.DictReader(fh)]


# SFT data variants of the candidates (DECISION_RULES.md, amendment 2): name -> Hydra overrides
DATA_VARIANTS: dict[str, list[str]] = {
    "": [],
    "hard70": ["data.source.hard_fraction=0.7"],  # 70 % tool-needed SFT samples (default 50 %)
    "noise50": ["data.source.answer_noise=0.5"],  # amendment 3: half the SFT answers name another colour
    "noise20": ["data.source.answer_noise=0.2"],  # amendment 4: a fifth of them
}
CANDIDATES = ["200", "300", "350", "375", "400", "600", "400:hard70", "450:hard70",
              "450:noise50", "500:noise50", "500:noise20", "550:noise20"]  # the rules' order


def parse_candidate(spec: str) -> tuple[int, str, str]:
    """``"400"`` or ``"400:hard70"`` -> (steps, data variant, name)."""
    steps, _, variant = spec.partition(":")
    if variant not in DATA_VARIANTS:
        raise SystemExit(f"unknown data variant {variant!r} in candidate {spec!r}: one of {sorted(DATA_VARIANTS)}")
    return int(steps), variant, f"sft_{steps}" + (f"_{variant}" if variant else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", nargs="+", default=CANDIDATES,
                   help="SFT steps, optionally :<data variant>, in the order of the rules (the first passing is chosen)")
    p.add_argument("--out", default="runs/miniature_decide")
    p.add_argument("--record", default=str(Path(__file__).parent / "calibration.json"))
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--no-tool-guess", type=float, default=1 / 6)
    p.add_argument("--reuse-failed", action="store_true",
                   help="re-apply the gate to the committed samples of candidates the record shows failing, not retrain them")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    py = sys.executable
    record_path = Path(args.record).resolve()
    failed_before = {c["name"]: c for c in (json.loads(record_path.read_text())["candidates"]
                                            if args.reuse_failed and record_path.exists() else [])
                     if not c["gate"]["passed"]}
    candidates = []
    for spec in args.candidates:
        steps, variant, name = parse_candidate(spec)
        run = out / "calib" / name
        committed = record_path.parent / "calibration" / f"{name}.csv"
        if name in failed_before and committed.exists():
            m = gate_metrics(read_samples(committed), args.no_tool_guess)
            v = gate_verdict(m)
            candidates.append({**failed_before[name], "metrics": m, "gate": v, "reused": True})
            print(f"{name} (committed samples): " + ", ".join(f"{k}={'pass' if ok else 'FAIL'}" for k, ok in v.items()),
                  flush=True)
            if v["passed"]:
                break
            continue
        if not (run / "hf" / "config.json").exists():
            subprocess.run([py, "-m", "metis.train", "experiment=miniature_sft", f"trainer.max_steps={steps}",
                            *DATA_VARIANTS[variant], f"hydra.run.dir={run}", "callbacks.progress.refresh_rate=0"],
                           cwd=ROOT, check=True)
        ev = run / "sampled_eval.json"
        if not ev.with_suffix(".jsonl").exists():  # sampled once; a re-run only re-applies the gate
            subprocess.run([py, str(Path(__file__).parent / "eval_policy.py"), "--init-from", str(run / "hf"),
                            "--n", str(args.n), "--samples", str(args.samples), "--out", str(ev)], cwd=ROOT,
                           check=True)
        samples = [json.loads(line) for line in ev.with_suffix(".jsonl").read_text().splitlines() if line.strip()]
        write_samples(committed, samples)
        m = gate_metrics(samples, args.no_tool_guess)
        v = gate_verdict(m)
        candidates.append({"name": name, "sft_steps": steps, "data": DATA_VARIANTS[variant], "hf": str(run / "hf"),
                           "metrics": m, "gate": v})
        print(f"{name}: " + ", ".join(f"{k}={'pass' if ok else 'FAIL'}" for k, ok in v.items()), flush=True)
        if v["passed"]:  # the first that passes is chosen: later candidates are not trained
            break
    chosen = next((c for c in candidates if c["gate"]["passed"]), None)
    record = {"gate": GATE, "samples_per_prompt": args.samples, "prompts": args.n, "candidates": candidates,
              "chosen": chosen["name"] if chosen else None}
    for path in {out / "calibration.json", record_path}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    if chosen is None:
        print("no candidate passes the gate: no RL run (see calibration.json)", file=sys.stderr)
        return 1
    print(f"chosen cold start: {chosen['hf']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
