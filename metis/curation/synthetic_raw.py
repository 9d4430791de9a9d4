"""A raw curation input with planted defects, and the planted policy that goes with it.

``make_raw_sets(out_dir, n_sft, n_rl, seed)`` writes

* ``sft_raw.jsonl`` (+ ``images/``): tool trajectories built from :mod:`metis.data.sft_synthetic`
  (faithful python calls and observations), cycling through blocks of 20 samples of kinds
  ``good`` (6), ``good_format`` (1: recorded output formatted differently, ``12345678.00`` vs
  ``12345678.0``), ``good_direct`` (1: no tool call), ``fail`` (2: the code raises), ``fake_text``
  (2: the recorded observation shows another number), ``fake_image`` (2: the recorded observation
  image is not what the code displays), ``easy`` (4: a task the base model solves without tools),
  ``pointless`` (2: a tool call that prints a fixed sentence); with ``bad_rows`` also three broken
  rows (not JSON, a missing image file, no messages);
* ``rl_raw.parquet``: prompt-only records (perception = zoom, math = arithmetic, search = a
  made-up fact question), in the paper's 9 : 7 : 4 category cycle, whose planted pass rate is 1
  (``always``), 0 (``never``) or in between (``mixed``; some call python first);
* ``plan.json``: per id, the kind, the stage and reason expected to remove it (or none), and the
  planted pass rate the :class:`PlantedEngine` realises.

:class:`PlantedEngine` is a rollout engine (``conf/rollout`` ``engine``) that answers each task
correctly in ``round(pass_rate * n)`` of its ``n`` rollouts, so the real ``no_tool_solvable`` and
``rl_pass_rate`` stages can be checked on a CPU where a random tiny model solves nothing.

Deliberate simplifications: one tool call per trajectory; search prompts carry a plain image and a
fictional question; the planted engine never looks at the images.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, ImageDraw

from metis.data.converters import python_observation, tool_call_text
from metis.data.schema import TrajectoryRecord, save_jsonl, save_records, split_placeholders
from metis.data.sft_synthetic import trajectory_for_task
from metis.data.synthetic import FAMILIES
from metis.core.task import Task

SFT_BLOCK = (["good"] * 6 + ["good_format", "good_direct", "fail", "fail", "fake_text", "fake_text",
                             "fake_image", "fake_image"] + ["easy"] * 4 + ["pointless"] * 2)
EXPECTED = {"fail": ("reexecute", "code_failed"), "fake_text": ("reexecute", "observation_mismatch_text"),
            "fake_image": ("reexecute", "observation_mismatch_image"),
            "easy": ("no_tool_solvable", "solvable_without_tools"), "pointless": ("judge", "unjustified_tool_call")}
NO_TOOL_RATE = {"easy": 1.0, "pointless": 0.375, "good_format": 0.25, "good_direct": 0.25}
GOOD_RATES = (0.0, 0.125, 0.5, 0.875)
RL_CATEGORIES = ["perception"] * 9 + ["search"] * 7 + ["math"] * 4
RL_BLOCK = [("mixed", 0.25, True), ("mixed", 0.5, False), ("always", 1.0, False), ("mixed", 0.75, False),
            ("never", 0.0, False), ("mixed", 0.375, True), ("mixed", 0.625, False), ("always", 1.0, False),
            ("mixed", 0.5, False), ("never", 0.0, False)]
POINTLESS_CODE = 'print("Let me look at the image more carefully.")'
BAD_ROWS = {"bad-not-json": "unreadable_row", "bad-missing-image": "missing_image", "bad-no-messages": "bad_messages"}


def _with_code(msg: dict[str, Any], code: str) -> None:
    reason = re.search(r"<reason>(.*?)</reason>", msg["content"][0]["text"], re.S)
    call = {"name": "python", "arguments": {"code": code}}
    msg["tool_call"] = call
    msg["content"] = [{"type": "text", "text": f"<reason>{reason.group(1) if reason else ''}</reason>"
                       + tool_call_text("python", call["arguments"])}]


def _tool_msg(rec: TrajectoryRecord) -> dict[str, Any]:
    return next(m for m in rec.messages if m["role"] == "tool")


def sft_record(kind: str, index: int, rng: random.Random) -> TrajectoryRecord:
    """One trajectory of the given planted ``kind``."""
    zoom = kind in ("fake_image",) or (kind in ("good", "fail", "easy", "pointless") and index % 2 == 1)
    hard = kind != "easy"
    task: Task = FAMILIES.get("zoom" if zoom else "arithmetic")(rng, hard, index)
    use_tool = kind not in ("good_direct", "pointless")
    rec = trajectory_for_task(task, use_tool, rng)
    calls = [m for m in rec.messages if m.get("tool_call")]
    if kind == "fail":
        if zoom:
            _with_code(calls[0], calls[0]["tool_call"]["arguments"]["code"].replace(".resize(", ".rezise("))
        else:
            _with_code(calls[0], f"print({task.meta['a']} * {task.meta['b']} + offset)")
    elif kind == "fake_text":
        _tool_msg(rec)["content"] = split_placeholders(python_observation(f"{int(task.answer) + 1000}\n"))
    elif kind == "fake_image":
        rec.images[-1] = rec.images[-1].transpose(Image.Transpose.ROTATE_180)
    elif kind == "good_format":
        _with_code(calls[0], f"print(float({task.meta['a']} * {task.meta['b']}))")
        _tool_msg(rec)["content"] = split_placeholders(python_observation(f"  {task.answer}.00 \n"))
    elif kind == "pointless":
        final = rec.messages[-1]
        call = {"name": "python", "arguments": {"code": POINTLESS_CODE}}
        ask = {"role": "assistant", "tool_call": call, "content": [{"type": "text", "text": "<reason>Before answering I "
               "will run some code.</reason>" + tool_call_text("python", call["arguments"])}]}
        obs = {"role": "tool", "tool_call": None,
               "content": split_placeholders(python_observation("Let me look at the image more carefully.\n"))}
        rec.messages = rec.messages[:-1] + [ask, obs, final]
    rid = f"sft-{kind}-{index:04d}"
    rec.id, rec.source_id = rid, rid
    rec.meta = {**rec.meta, "verifier": "numeric"}
    return rec


def _search_task(rng: random.Random, index: int) -> Task:
    img = Image.new("RGB", (224, 224), (250, 250, 250))
    color = tuple(rng.randint(30, 220) for _ in range(3))
    ImageDraw.Draw(img).rectangle((40, 60, 184, 164), fill=color)
    year = rng.randint(1850, 2020)
    town = "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)).capitalize()
    return Task(id=f"search-{index}", question=f"<image>The banner in the image belongs to the town of {town}. In "
                f"which year did {town} first raise it?", images=[img], answer=str(year), verifier="numeric",
                data_source="synthetic/search", category="search", needs_tool=True)


def rl_record(index: int, rng: random.Random) -> tuple[TrajectoryRecord, dict[str, Any]]:
    category = RL_CATEGORIES[index % len(RL_CATEGORIES)]
    behaviour, rate, tool_first = RL_BLOCK[(index + index // len(RL_CATEGORIES)) % len(RL_BLOCK)]
    if category == "search":
        task = _search_task(rng, index)
    else:
        task = FAMILIES.get("zoom" if category == "perception" else "arithmetic")(rng, rng.random() < 0.5, index)
    rid = f"rl-{behaviour}-{index:04d}"
    rec = TrajectoryRecord(id=rid, messages=[{"role": "user", "content": task.content(), "tool_call": None}],
                           images=list(task.images), ground_truth=[str(task.answer)], source=task.data_source,
                           source_id=rid, meta={"category": category, "verifier": "numeric",
                                                "needs_tool": task.needs_tool})
    return rec, {"behaviour": behaviour, "category": category, "pass_rate": rate, "tool_first": tool_first,
                 "expected": None if behaviour == "mixed" else ("rl_pass_rate",
                                                                 "always_solved" if rate >= 1 else "never_solved")}


def make_raw_sets(out_dir: str | Path, n_sft: int = 240, n_rl: int = 120, seed: int = 0,
                  bad_rows: bool = True) -> dict[str, Any]:
    """Write the raw SFT and RL sets and their plan; returns ``{"sft", "rl", "plan", "plan_path"}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    plan: dict[str, Any] = {"sft": {}, "rl": {}, "bad_rows": {}, "engine": {}}
    records = []
    for i in range(n_sft):
        kind = SFT_BLOCK[i % len(SFT_BLOCK)]
        rec = sft_record(kind, i, rng)
        rate = NO_TOOL_RATE.get(kind, GOOD_RATES[(i // len(SFT_BLOCK)) % len(GOOD_RATES)] if kind == "good" else 0.5)
        expected = EXPECTED.get(kind)
        plan["sft"][rec.id] = {"kind": kind, "expected_stage": expected[0] if expected else None,
                               "expected_reason": expected[1] if expected else None, "no_tool_pass_rate": rate}
        plan["engine"][rec.id] = {"pass_rate": rate}
        records.append(rec)
    sft_path = save_jsonl(records, out / "sft_raw.jsonl", out / "images")
    if bad_rows:
        good_row = json.loads(sft_path.read_text().splitlines()[0])
        with sft_path.open("a") as fh:
            fh.write('{"id": "bad-not-json", "messages": [\n')
            fh.write(json.dumps({**good_row, "id": "bad-missing-image", "source_id": "bad-missing-image",
                                 "images": ["images/does_not_exist.png"]}) + "\n")
            fh.write(json.dumps({"id": "bad-no-messages", "images": [], "source_id": "x", "meta": "{}"}) + "\n")
        plan["bad_rows"] = {"row-%d" % n_sft: BAD_ROWS["bad-not-json"], "bad-missing-image": BAD_ROWS["bad-missing-image"],
                            "bad-no-messages": BAD_ROWS["bad-no-messages"]}
    prompts = []
    for i in range(n_rl):
        rec, entry = rl_record(i, rng)
        plan["rl"][rec.id] = entry
        plan["engine"][rec.id] = {"pass_rate": entry["pass_rate"], "tool_first": entry["tool_first"]}
        prompts.append(rec)
    rl_path = save_records(prompts, out / "rl_raw.parquet")
    plan_path = out / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1))
    return {"sft": str(sft_path), "rl": str(rl_path), "plan": plan, "plan_path": str(plan_path)}


class PlantedEngine:
    """Rollout engine answering each task right in ``round(pass_rate * n)`` of its ``n`` rollouts.

    ``plan``: a ``plan.json`` path (its ``engine`` entry) or ``{task_id: {"pass_rate", "tool_first"}}``;
    unknown ids are never answered right. With ``tool_first`` the first rollout of a task calls
    python (printing the answer) before answering. Other keyword arguments (the ``hf`` engine's
    sampling settings) are accepted and ignored.
    """

    def __init__(self, plan: str | dict[str, Any], **_ignored: Any) -> None:
        self.plan = json.loads(Path(plan).read_text())["engine"] if isinstance(plan, (str, Path)) else dict(plan)
        self.slots: dict[str, tuple[int, int]] = {}
        self.tok: Any = None
        self.calls: defaultdict[str, int] = defaultdict(int)  # generate calls per task id (tests)

    def bind(self, model: Any, processor: Any) -> None:
        self.tok = processor.tokenizer

    def after_rollout(self) -> None:
        """Nothing to release."""

    def sync_weights(self, model: Any) -> None:
        """No weights."""

    @staticmethod
    def _wrong(answer: str) -> str:
        return str(abs(int(answer)) * 3 + 11) if answer.lstrip("-").isdigit() else "not " + answer  # far off: numeric tolerance

    def generate(self, trajs: Sequence[Any], max_new_tokens: int, stop_ids: list[int],
                 greedy: bool = False) -> list[list[int]]:
        fresh: defaultdict[str, list[Any]] = defaultdict(list)
        for t in trajs:
            if t.num_turns == 0:
                fresh[t.task.id].append(t)
        for group in fresh.values():
            for slot, t in enumerate(group):
                self.slots[t.traj_id] = (slot, len(group))
        out = []
        for t in trajs:
            self.calls[t.task.id] += 1
            slot, n = self.slots[t.traj_id]
            entry = self.plan.get(t.task.id, {})
            answer = str(t.task.answer[0] if isinstance(t.task.answer, list) else t.task.answer)
            if entry.get("tool_first") and slot == 0 and t.num_turns == 0:
                text = "<reason>Let me check with Python.</reason>" + tool_call_text("python", {"code": f"print({answer!r})"})
            else:
                final = answer if slot < round(float(entry.get("pass_rate", 0.0)) * n) else self._wrong(answer)
                text = f"<reason>I read the question.</reason><answer>{final}</answer><|im_end|>"
            out.append(self.tok(text, add_special_tokens=False)["input_ids"][:max_new_tokens])
        return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a raw curation input with planted defects.")
    parser.add_argument("out_dir")
    parser.add_argument("--n-sft", type=int, default=240)
    parser.add_argument("--n-rl", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    made = make_raw_sets(args.out_dir, args.n_sft, args.n_rl, args.seed)
    print(json.dumps({k: made[k] for k in ("sft", "rl", "plan_path")}, indent=1))


if __name__ == "__main__":
    main()
