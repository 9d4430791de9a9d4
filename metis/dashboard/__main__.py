"""``python -m metis.dashboard <runs...>``: the curves of Metis runs, as PNGs and one HTML page.

    python -m metis.dashboard runs/train/2026-01-01_12-00-00_hdpo_marker
    python -m metis.dashboard 'runs/miniature/rl/*' --out experiments/miniature
    python -m metis.dashboard --wandb my-team/metis --group miniature      # a saved W&B workspace
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metis.dashboard",
        description="Draw the RL curves of Metis runs (seed means with 95%% bands over RL steps), grouped "
                    "into arms by reward scheme; or save the same panels as a W&B workspace.")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run folders (holding config.yaml), globs, or a sweep's root (searched recursively)")
    p.add_argument("--out", type=Path, default=Path("dashboard"),
                   help="output folder for <section>.png, index.html and summary.csv (default: ./dashboard)")
    p.add_argument("--group-by", action="append", default=None, metavar="KEY",
                   help="config key (dotted, e.g. reward.w_tool) that defines an arm; repeatable. Default: the "
                        "reward scheme plus whatever else differs between runs, seeds apart")
    p.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="trailing mean over N RL steps of the training curves (default 1: as logged)")
    p.add_argument("--title", default="Metis runs", help="title of the HTML page")
    w = p.add_argument_group("W&B workspace (instead of drawing)")
    w.add_argument("--wandb", metavar="ENTITY/PROJECT", help="save a W&B workspace in this project (needs a login)")
    w.add_argument("--group", help="only the runs of this W&B group (e.g. a sweep's name)")
    w.add_argument("--group-key", default="reward.name",
                   help="config key whose values group the runs in every panel (default reward.name)")
    w.add_argument("--name", help="workspace name (default: 'Metis curves: <group>')")
    w.add_argument("--print-spec", action="store_true",
                   help="print the workspace's JSON spec and exit without contacting the server")
    return p


def draw(args: argparse.Namespace, command: str) -> int:
    from metis.dashboard.panels import sections_for
    from metis.dashboard.plot import draw_section, summary_rows, write_csv, write_html
    from metis.dashboard.runs import find_runs, label_runs, load_run

    dirs = find_runs(args.runs)
    if not dirs:
        print(f"metis.dashboard: no run folders (with config.yaml) under {' '.join(args.runs)}", file=sys.stderr)
        return 2
    runs = [load_run(d) for d in dirs]
    empty = [r.path for r in runs if not r.rows]
    for path in empty:
        print(f"metis.dashboard: {path} has no logged history (wandb/ or csv/): skipped", file=sys.stderr)
    runs = [r for r in runs if r.rows]
    if not runs:
        return 2
    groups = label_runs(runs, args.group_by)
    keys = set().union(*(r.keys for r in runs))
    sections = sections_for(keys)
    if not sections:
        print("metis.dashboard: the runs logged none of the RL metrics (train/accuracy, ...)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    images = []
    for section in sections:
        path = args.out / f"{section.name.replace(' ', '_')}.png"
        draw_section(section, groups, path, args.smooth)
        images.append((section.name, path))
    rows = summary_rows(groups)
    write_csv(rows, args.out / "summary.csv")
    write_html(args.title, images, rows, runs, args.out / "index.html", command)
    print(f"{len(runs)} runs in {len(groups)} arms: {', '.join(f'{k} ({len(v)})' for k, v in groups.items())}")
    for name, path in images:
        print(f"  {name:<20} {path}")
    print(f"  {'page':<20} {args.out / 'index.html'}")
    return 0


def workspace(args: argparse.Namespace) -> int:
    import json

    from metis.dashboard.workspace import build_workspace, parse_project

    entity, project = parse_project(args.wandb)
    ws = build_workspace(entity, project, group=args.group, group_key=args.group_key, name=args.name)
    if args.print_spec:
        print(json.dumps(ws._to_model().model_dump(by_alias=True, exclude_none=True), indent=1))
        return 0
    ws.save()
    print(f"W&B workspace saved: {ws.url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if args.wandb:
        try:
            return workspace(args)
        except ValueError as e:
            print(f"metis.dashboard: {e}", file=sys.stderr)
            return 2
    if not args.runs:
        parser().error("give run folders (or --wandb ENTITY/PROJECT)")
    try:
        return draw(args, "python -m metis.dashboard " + " ".join(shlex.quote(a) for a in argv))
    except FileNotFoundError as e:
        print(f"metis.dashboard: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
