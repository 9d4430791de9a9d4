"""Build (or check) the shipped cold start ``metis/assets/coldstart_marker`` with the project's own recipe.

    python scripts/build_coldstart.py                 # SFT (experiment=coldstart_marker), measure, ship
    python scripts/build_coldstart.py --check         # rebuild in a temporary folder, compare behaviour

1. ``python -m metis.train experiment=coldstart_marker`` (the SFT recipe; its ``hf/`` export);
2. a greedy evaluation of the export on the first 16 validation prompts of the marker task (the
   validation set of ``experiment=hdpo_marker``): accuracy, tool-needed / unneeded accuracy,
   unnecessary and necessary tool rates (``experiments/miniature/eval_policy.py``);
3. the weights and config copied to ``metis/assets/coldstart_marker/`` with ``manifest.json``: the
   command, the commit it was built from, each file's SHA-256 and size, and the behaviour of step 2.

``--check`` rebuilds and compares the behaviour with the manifest's (within ``--tolerance``, default
2 of 16 prompts): a rebuild on another CPU may differ in the last bits, never in kind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metis.utils.files import file_sha256 as sha256  # noqa: E402

ASSET = ROOT / "metis" / "assets" / "coldstart_marker"
RECIPE = "experiment=coldstart_marker"
FILES = ("config.json", "model.safetensors", "generation_config.json")
BEHAVIOUR = ("accuracy", "accuracy_tool_needed", "accuracy_tool_unneeded", "unnecessary_tool_rate",
             "necessary_tool_rate", "tool_call_rate", "mean_tool_calls")
VAL_PROMPTS = 16


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if git("status", "--porcelain", "--", "metis", "conf", ":!metis/assets") else "")


def build(work: Path, overrides: list[str]) -> tuple[Path, float]:
    cmd = [sys.executable, "-m", "metis.train", RECIPE, f"hydra.run.dir={work / 'sft'}", "logger=csv",
           "callbacks.progress.refresh_rate=0", *overrides]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the SFT recipe failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return work / "sft" / "hf", time.time() - t0


def behaviour(hf: Path, work: Path) -> dict[str, float]:
    out_file = work / "eval.json"
    cmd = [sys.executable, str(ROOT / "experiments/miniature/eval_policy.py"), "--init-from", str(hf),
           "--n", str(VAL_PROMPTS), "--out", str(out_file)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the evaluation failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    metrics = json.loads(out_file.read_text())
    return {k: float(metrics[k]) for k in BEHAVIOUR if k in metrics}


def compare(built: dict[str, float], shipped: dict[str, float], tolerance: float) -> list[str]:
    """Differences beyond ``tolerance`` (absolute), one line each."""
    return [f"{k}: shipped {shipped[k]:.3f}, rebuilt {built.get(k, float('nan')):.3f}"
            for k in shipped if not abs(built.get(k, float("nan")) - shipped[k]) <= tolerance]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare with the manifest")
    p.add_argument("--tolerance", type=float, default=2 / VAL_PROMPTS, help="allowed absolute difference per rate")
    p.add_argument("--out", type=Path, default=ASSET, help="where to ship it (default metis/assets/coldstart_marker)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides of the recipe (not for the shipped build)")
    args = p.parse_args(argv)
    built_from = commit()  # the code the build runs (read before it starts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf, seconds = build(work, args.overrides)
        measured = behaviour(hf, work)
        if args.check:
            manifest = json.loads((args.out / "manifest.json").read_text())
            diffs = compare(measured, manifest["behaviour"], args.tolerance)
            report = {"rebuilt": measured, "shipped": manifest["behaviour"], "build_s": round(seconds)}
            print(json.dumps(report, indent=1))
            if diffs:
                print("the rebuilt cold start behaves differently:\n  " + "\n  ".join(diffs), file=sys.stderr)
                return 1
            return 0
        args.out.mkdir(parents=True, exist_ok=True)
        files = {}
        for name in FILES:
            if (hf / name).exists():
                shutil.copy2(hf / name, args.out / name)
                files[name] = {"sha256": sha256(args.out / name), "bytes": (args.out / name).stat().st_size}
        manifest = {
            "recipe": f"python -m metis.train {RECIPE}" + "".join(f" {o}" for o in args.overrides),
            "built_by": "python scripts/build_coldstart.py",
            "commit": built_from,
            "build_seconds": round(seconds),
            "files": files,
            "behaviour": measured,
            "behaviour_of": f"greedy, first {VAL_PROMPTS} val prompts of the marker task (make_splits seed 0), "
                            "python tool (experiments/miniature/eval_policy.py)",
        }
        (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
