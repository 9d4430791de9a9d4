"""The paper's evaluation benchmarks as ``Task`` lists (docs/paper.md, "Evaluation").

``BENCHMARKS`` maps a loader name (``conf/benchmark/<name>.yaml: loader``) to a row converter
``fn(row, ctx) -> list[Task]``; :func:`load_benchmark` reads the rows (a local file or folder in
the VLMEvalKit TSV or Hugging Face layouts, or a hub id) and converts them, skipping and
reporting rows that cannot become tasks (missing fields, corrupt images).

Every task keeps the benchmark's own fields in ``meta`` (HRBench ``category`` single/cross and
``cycle_category``, MathVista ``question_type``, CharXiv template ids, DynaMath ``qid`` …) and
its options in ``meta["options"]`` (letter -> text) for option extraction at scoring time.

Deliberate simplifications: prompts are the question, the lettered options and a one-line
answer instruction (not each benchmark's official prompt); CharXiv descriptive questions use
the 19 public templates with a plain "For the subplot at row r and column c," prefix on
multi-subplot figures.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metis.core.task import Task
from metis.eval.formats import BadRow, decode_images, is_missing, open_source
from metis.rl.verifiers import parse_number
from metis.utils.registry import Registry

log = logging.getLogger("metis.eval")

BENCHMARKS: Registry = Registry("benchmark loader")
LETTERS = string.ascii_uppercase[:10]  # A-J
MC_INSTRUCTION = "Answer with the option's letter from the given choices."
IMAGE_FIELDS = ("decoded_image", "image", "images", "image_path", "img", "figure", "Image")
ID_FIELDS = ("index", "id", "pid", "sample_index", "question_id", "ID", "Question_id")
QUESTION_FIELDS = ("question", "text", "prompt", "query", "Question")
ANSWER_FIELDS = ("answer", "label", "ground_truth", "gt_answer", "solution", "Ground truth", "Answer")
CHOICE_FIELDS = ("choices", "options", "option", "Answer choices", "candidates")
_BULKY = set(IMAGE_FIELDS) | set(QUESTION_FIELDS) | set(ANSWER_FIELDS) | set(CHOICE_FIELDS) | set(LETTERS) | {
    "__base_dir__", "image_1", "image_2", "image_3", "image_4", "image_5", "query_wo", "query_cot"}

CHARXIV_TEMPLATES = {
    1: "What is the title of the plot?",
    2: "What is the label of the x-axis?",
    3: "What is the label of the y-axis?",
    4: "What is the leftmost labeled tick on the x-axis?",
    5: "What is the rightmost labeled tick on the x-axis?",
    6: "What is the spatially lowest labeled tick on the y-axis?",
    7: "What is the spatially highest labeled tick on the y-axis?",
    8: "What is difference between consecutive numerical tick values on the x-axis?",
    9: "What is difference between consecutive numerical tick values on the y-axis?",
    10: "How many lines are there?",
    11: "Do any lines intersect?",
    12: "How many discrete labels are there in the legend?",
    13: "What are the names of the labels in the legend? (from top to bottom, then left to right)",
    14: "What is the difference between the maximum and minimum values of the tick labels on the continuous "
        "legend (i.e., colorbar)?",
    15: "What is the maximum value of the tick labels on the continuous legend (i.e., colorbar)?",
    16: "What is the general trend of data from left to right?",
    17: "What is the total number of explicitly labeled ticks across all axes?",
    18: "What is the layout of the subplots?",
    19: "What is the number of subplots?",
}
CHARXIV_ANSWER_TYPES = {1: "text_in_chart", 2: "text_in_general", 3: "number_in_chart", 4: "number_in_general"}


@dataclass
class RowContext:
    benchmark: str
    data_source: str
    category: str
    base_dir: str | None
    shared_images: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # loader_options from the YAML


@dataclass
class LoadedBenchmark:
    name: str
    tasks: list[Task]
    skipped: list[dict[str, str]]  # {"row": ..., "reason": ...}
    origin: str


# ----------------------------------------------------------------------------- helpers
def pick(row: dict[str, Any], names: tuple[str, ...] | list[str]) -> Any:
    """The first non-missing value among ``names`` (exact, then case-insensitive)."""
    for n in names:
        if n in row and not is_missing(row[n]):
            return row[n]
    lower = {str(k).lower(): k for k in row}
    for n in names:
        k = lower.get(n.lower())
        if k is not None and not is_missing(row[k]):
            return row[k]
    return None


def row_images(row: dict[str, Any], ctx: RowContext) -> list:
    base = row.get("__base_dir__") or ctx.base_dir
    first_error: BadRow | None = None
    for name in IMAGE_FIELDS:
        value = row.get(name)
        if is_missing(value) if not isinstance(value, (list, dict, bytes)) else not value:
            continue
        try:
            images = decode_images(value, base, ctx.shared_images)
        except BadRow as err:
            first_error = first_error or BadRow(f"{name}: {err}")
            continue
        if images:
            return images
    extra = [row[k] for k in sorted(row) if re.fullmatch(r"image_\d+", str(k)) and not is_missing(row[k])]
    if extra:
        return [im for v in extra for im in decode_images(v, base, ctx.shared_images)]
    raise first_error or BadRow("no image")


def parse_options(row: dict[str, Any]) -> dict[str, str]:
    """Options as letter -> text, from columns A..J or a choices/options list (or its string form)."""
    opts = {c: str(row[c]).strip() for c in LETTERS if c in row and not is_missing(row[c])}
    if opts:
        return opts
    raw = pick(row, CHOICE_FIELDS)
    if raw is None:
        return {}
    if isinstance(raw, str):
        s = raw.strip()
        try:
            raw = json.loads(s)
        except json.JSONDecodeError:
            try:
                raw = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                raw = s
    if isinstance(raw, dict):
        return {str(k).strip().upper(): str(v).strip() for k, v in raw.items()}
    if isinstance(raw, (list, tuple)):
        out = {}
        for letter, item in zip(LETTERS, raw):
            text = str(item).strip()
            m = re.match(rf"^\(?([{LETTERS}])[\).:]\s*(.*)$", text)
            out[m.group(1) if m else letter] = m.group(2) if m else text
        return out
    if isinstance(raw, str):  # "A. 1; B. 2" / "(A) x (B) y": split on the letter markers
        parts = re.split(rf"(?:^|[;\n]|\s)\(?([{LETTERS}])[\).:]\s*", raw)
        if len(parts) >= 5:
            return {parts[i]: parts[i + 1].strip(" ;\n") for i in range(1, len(parts) - 1, 2)}
    return {}


def to_letter_answer(answer: Any, options: dict[str, str]) -> str:
    """Ground truth as option letter(s) where it is given as the option text or an index."""
    text = str(answer).strip()
    if re.fullmatch(rf"\(?[{LETTERS}]\)?(\s*[,;/&]?\s*\(?[{LETTERS}]\)?)*", text):
        return text
    for letter, opt in options.items():
        if text.lower() == opt.lower():
            return letter
    if text.isdigit() and options and 0 <= int(text) < len(options) and text not in options.values():
        return list(options)[int(text)]
    return text


def format_question(question: str, options: dict[str, str], hint: Any = None, instruction: str | None = None) -> str:
    parts = [f"Hint: {hint}"] if not is_missing(hint) else []
    parts.append(question.strip())
    if options:
        parts.append("Options:\n" + "\n".join(f"{k}. {v}" for k, v in options.items()))
    if instruction:
        parts.append(instruction)
    return "\n".join(parts)


def row_meta(row: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k, v in row.items():
        if k in _BULKY or str(k).startswith("__"):
            continue
        if isinstance(v, dict):  # e.g. MathVista metadata {task, category, skills, ...}
            for k2, v2 in v.items():
                if isinstance(v2, (str, int, float, bool)) and not (isinstance(v2, str) and len(v2) > 300):
                    meta.setdefault(str(k2), v2)
        elif isinstance(v, (str, int, float, bool)) and not (isinstance(v, str) and len(v) > 300):
            meta[str(k)] = v
        elif isinstance(v, list) and all(isinstance(x, str) for x in v) and len(v) <= 20:
            meta[str(k)] = list(v)
    meta.update(extra or {})
    return meta


def free_form_verifier(answer: str, numeric: str = "numeric") -> str:
    return numeric if parse_number(answer) is not None and re.search(r"\d", answer) else "exact"


def _task(row: dict[str, Any], ctx: RowContext, rid: str, question: str, answer: str, verifier: str,
          options: dict[str, str] | None = None, meta: dict[str, Any] | None = None) -> Task:
    if not str(question).strip():
        raise BadRow("empty question")
    if is_missing(answer):
        raise BadRow("no answer")
    m = row_meta(row, meta)
    if options:
        m["options"] = options
    return Task(id=rid, question=question, images=row_images(row, ctx), answer=str(answer).strip(),
                verifier=verifier, data_source=ctx.data_source, category=ctx.category, meta=m)


def _rid(row: dict[str, Any]) -> str:
    if pick(row, ("index",)) is None and pick(row, ("ID",)) is not None and pick(row, ("key",)) is not None:
        return f"{pick(row, ('ID',))}_{pick(row, ('key',))}"  # WeMath (HF): ID is shared by a problem's steps
    value = pick(row, ID_FIELDS)
    if value is None:
        raise BadRow("no id")
    return str(value).strip()


# ----------------------------------------------------------------------------- loaders
@BENCHMARKS.register("mcq")
def mcq_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """VLMEvalKit multiple choice (V*, HRBench, TreeBench, MME-RealWorld, SEED-Bench-2-Plus,
    WeMath, LogicVista), or a HF row with a choices/options list."""
    question = pick(row, QUESTION_FIELDS)
    answer = pick(row, ANSWER_FIELDS)
    if question is None or answer is None:
        raise BadRow("missing question or answer")
    options = parse_options(row)
    instruction = ctx.options.get("instruction", MC_INSTRUCTION)
    text = format_question(str(question), options, row.get("hint"), instruction)
    return [_task(row, ctx, _rid(row), text, to_letter_answer(answer, options), "multiple_choice", options)]


@BENCHMARKS.register("mathvista")
def mathvista_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """MathVista testmini (AI4Math/MathVista or VLMEvalKit MathVista_MINI)."""
    question, answer = pick(row, QUESTION_FIELDS), pick(row, ANSWER_FIELDS)
    if question is None or answer is None:
        raise BadRow("missing question or answer")
    options = parse_options(row)
    qtype = str(row.get("question_type") or ("multi_choice" if options else "free_form"))
    meta = {"question_type": qtype, "answer_text": str(answer)}
    if qtype == "multi_choice" and options:
        text = format_question(str(question), options, None, MC_INSTRUCTION)
        return [_task(row, ctx, _rid(row), text, to_letter_answer(answer, options), "multiple_choice", options, meta)]
    unit = row.get("unit")
    instruction = "Answer with the final value only" + (f" (unit: {unit})." if not is_missing(unit) else ".")
    text = format_question(str(question), {}, None, instruction)
    return [_task(row, ctx, _rid(row), text, str(answer), "math", None, meta)]


@BENCHMARKS.register("mathverse")
def mathverse_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """MathVerse testmini: options live inside the question text; ``problem_version`` kept."""
    question = pick(row, ("query_wo", "question", "query_cot", "text"))
    answer = pick(row, ANSWER_FIELDS)
    if question is None or answer is None:
        raise BadRow("missing question or answer")
    qtype = str(row.get("question_type") or "free-form")
    meta = {"question_type": qtype}
    options = parse_options(row)
    if "choice" in qtype.lower() or (options and re.fullmatch(rf"[{LETTERS}]", str(answer).strip())):
        text = format_question(str(question), options, None, None if "query_wo" in row else MC_INSTRUCTION)
        return [_task(row, ctx, _rid(row), text, to_letter_answer(answer, options), "multiple_choice", options, meta)]
    return [_task(row, ctx, _rid(row), str(question), str(answer), "math", None, meta)]


@BENCHMARKS.register("dynamath")
def dynamath_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """DynaMath: ``answer_type`` multiple choice / float / text; ``qid`` groups a seed's variants."""
    question, answer = pick(row, QUESTION_FIELDS), pick(row, ANSWER_FIELDS)
    if question is None or answer is None:
        raise BadRow("missing question or answer")
    atype = str(row.get("answer_type") or "").lower()
    rid = _rid(row)
    meta = {"qid": str(row.get("qid", rid.split("_")[0])), "answer_type": atype}
    if "choice" in atype:
        options = parse_options(row)
        text = format_question(str(question), options, None, MC_INSTRUCTION)
        return [_task(row, ctx, rid, text, to_letter_answer(answer, options), "multiple_choice", options, meta)]
    verifier = "numeric" if "float" in atype or "int" in atype else free_form_verifier(str(answer))
    return [_task(row, ctx, rid, str(question), str(answer), verifier, None, meta)]


def _charxiv_prefix(row: dict[str, Any], qid: int) -> str:
    try:
        n = int(row.get("num_subplots") or 1)
    except (TypeError, ValueError):
        n = 1
    if n > 1 and qid not in (18, 19):
        return f"For the subplot at row {row.get('subplot_row')} and column {row.get('subplot_col')}, "
    return ""


@BENCHMARKS.register("charxiv")
def charxiv_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """CharXiv (princeton-nlp/CharXiv: one figure per row, four descriptive template ids and one
    reasoning question) or an already exploded TSV (question/answer columns).
    ``loader_options.mode``: descriptive | reasoning."""
    mode = ctx.options.get("mode", "reasoning")
    base = pick(row, ("figure_id", "original_id", "index", "id", "figure_path"))
    base_id = "" if base is None else str(base).strip()
    if "reasoning_q" not in row and "descriptive_q1" not in row:  # exploded (VLMEvalKit-style)
        q, a = pick(row, QUESTION_FIELDS), pick(row, ANSWER_FIELDS)
        if q is None or a is None:
            raise BadRow("missing question or answer")
        return [_task(row, ctx, _rid(row), str(q), str(a), free_form_verifier(str(a)))]
    if not base_id:
        raise BadRow("no figure id")
    keep = {k: v for k, v in row.items() if not re.match(r"(descriptive|reasoning)_", str(k))}
    if mode == "reasoning":
        q, a = row.get("reasoning_q"), row.get("reasoning_a")
        if is_missing(q) or is_missing(a):
            raise BadRow("missing reasoning_q/reasoning_a")
        atype = row.get("reasoning_a_type")
        meta = {"answer_type": CHARXIV_ANSWER_TYPES.get(int(atype), str(atype)) if not is_missing(atype) else None,
                "q_source": row.get("reasoning_q_source")}
        return [_task(keep, ctx, f"{base_id}_rq", str(q), str(a), free_form_verifier(str(a)), None, meta)]
    tasks = []
    images = None
    for k in range(1, 5):
        qid, a = row.get(f"descriptive_q{k}"), row.get(f"descriptive_a{k}")
        if is_missing(qid) or is_missing(a):
            continue
        try:
            qid = int(qid)
            template = CHARXIV_TEMPLATES[qid]
        except (TypeError, ValueError, KeyError):
            raise BadRow(f"unknown descriptive template {qid!r}") from None
        prefix = _charxiv_prefix(row, qid)
        text = prefix + (template[0].lower() + template[1:] if prefix else template)
        task = _task(keep if images is None else {**keep, "image": images}, ctx, f"{base_id}_dq{k}", text, str(a),
                     free_form_verifier(str(a)), None, {"template": qid})
        images = task.images  # decode the figure once per row
        tasks.append(task)
    if not tasks:
        raise BadRow("no descriptive question")
    return tasks


# ----------------------------------------------------------------------------- loading
def load_benchmark(name: str, loader: str, path: str | None = None, url: str | None = None,
                   hub_id: str | None = None, hub_config: str | None = None, split: str | None = None,
                   data_source: str | None = None, category: str = "perception",
                   loader_options: dict[str, Any] | None = None, limit: int | None = None,
                   cache_dir: str | None = None, **_: Any) -> LoadedBenchmark:
    """Read and convert a benchmark (see :func:`metis.eval.formats.open_source` for where from). Extra YAML keys
    (metric settings) are ignored here. ``limit`` keeps the first N tasks."""
    convert: Callable[[dict[str, Any], RowContext], list[Task]] = BENCHMARKS.get(loader)
    source = open_source(name, path, url, hub_id, hub_config, split, cache_dir)
    shared = {}
    for row in source.rows:  # VLMEvalKit stores a repeated image once; others point at its index
        if isinstance(row, dict) and isinstance(row.get("image"), str) and len(row["image"]) > 64:
            idx = row.get("index")
            if not is_missing(idx):
                shared[str(idx).strip()] = row["image"]
    ctx = RowContext(name, data_source or name, category, str(source.base_dir) if source.base_dir else None,
                     shared, dict(loader_options or {}))
    tasks: list[Task] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for n, row in enumerate(source.rows):
        if limit is not None and len(tasks) >= limit:
            break
        label = f"row {n}"
        try:
            if not isinstance(row, dict):
                raise BadRow(f"not a record ({type(row).__name__})")
            if "__bad_row__" in row:
                raise BadRow(row["__bad_row__"])
            label = f"row {n} (id {pick(row, ID_FIELDS)})"
            new = convert(row, ctx)
        except BadRow as err:
            skipped.append({"row": label, "reason": str(err)})
            continue
        except Exception as err:  # noqa: BLE001 - one broken row never ends the run
            skipped.append({"row": label, "reason": f"{type(err).__name__}: {err}"})
            continue
        for task in new:
            if task.id in seen:
                skipped.append({"row": label, "reason": f"duplicate id {task.id}"})
                continue
            seen.add(task.id)
            tasks.append(task)
    tasks = tasks[:limit] if limit is not None else tasks
    for s in skipped:
        log.warning("%s: skipped %s: %s", name, s["row"], s["reason"])
    log.info("%s: %d tasks from %s (%d rows skipped)", name, len(tasks), source.origin, len(skipped))
    return LoadedBenchmark(name, tasks, skipped, source.origin)
