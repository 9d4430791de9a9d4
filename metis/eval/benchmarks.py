"""The paper's evaluation benchmarks as ``Task`` lists (docs/evaluation.md).

``BENCHMARKS`` maps a loader name (``conf/benchmark/<name>.yaml: loader``) to a row converter
``fn(row, ctx) -> list[Task]``; :func:`load_benchmark` reads the rows (a local file or folder in
the VLMEvalKit TSV or Hugging Face layouts, or a hub id) and converts them, skipping and
reporting rows that cannot become tasks (missing fields, corrupt images).

Every task keeps the benchmark's own fields in ``meta`` (HRBench ``category`` single/cross and
``cycle_category``, MathVista ``question_type``, CharXiv template ids, DynaMath ``qid`` …) and
its options in ``meta["options"]`` (letter -> text) for option extraction at scoring time.

Deliberate simplifications: prompts are the question, the lettered options and a one-line
answer instruction (not each benchmark's official prompt); CharXiv descriptive questions use
the 19 public templates (:mod:`metis.eval.charxiv`) with a plain "For the subplot at row r and
column c," prefix on multi-subplot figures.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metis.core.task import Task
from metis.eval.formats import BadRow, EvalError, RowSource, decode_images, is_missing, open_source
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

@dataclass
class RowContext:
    benchmark: str
    data_source: str
    category: str
    base_dir: str | None
    shared_images: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)  # loader_options from the YAML
    images: bool = True  # False: images are not decoded (score-only runs)


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
    if not ctx.images:
        return []
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


def need(row: dict[str, Any], question_fields: tuple[str, ...] = QUESTION_FIELDS) -> tuple[Any, Any]:
    """(question, answer) of a row; a missing one is a :class:`BadRow` naming the columns looked at."""
    question, answer = pick(row, question_fields), pick(row, ANSWER_FIELDS)
    if answer is None:
        raise BadRow(f"no answer (columns {'/'.join(ANSWER_FIELDS[:4])} missing or empty)")
    if question is None:
        raise BadRow(f"no question (columns {'/'.join(question_fields[:4])} missing or empty)")
    return question, answer


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


def option_answer(answer: Any, options: dict[str, str], answer_option: Any = None) -> str:
    """The ground-truth letter of a row whose ``answer`` is the option text (MathVista): the
    ``answer_option`` column first (VLMEvalKit), then the option whose text equals the answer,
    then :func:`to_letter_answer` (so an option text such as "A" is never read as a letter first)."""
    if not is_missing(answer_option) and str(answer_option).strip().upper() in options:
        return str(answer_option).strip().upper()
    text = str(answer).strip()
    for letter, opt in options.items():
        if text == opt.strip():
            return letter
    for letter, opt in options.items():
        if text.lower() == opt.strip().lower():
            return letter
    return to_letter_answer(text, options)


def format_question(question: str, options: dict[str, str], hint: Any = None, instruction: str | None = None) -> str:
    parts = [f"Hint: {hint}"] if not is_missing(hint) else []
    parts.append(question.strip())
    if options:
        parts.append("Options:\n" + "\n".join(f"{k}. {v}" for k, v in options.items()))
    if instruction:
        parts.append(instruction)
    return "\n".join(parts)


KEEP_LONG = ("target_instances", "grading_query")  # kept in meta whatever their length (scoring reads them)


def row_meta(row: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for k, v in row.items():
        if k in _BULKY or str(k).startswith("__"):
            continue
        if k in KEEP_LONG:
            if isinstance(v, (list, dict)) or not is_missing(v):
                meta[str(k)] = v
            continue
        if isinstance(v, str) and v.strip().startswith("{") and v.strip().endswith("}"):
            try:  # VLMEvalKit stores dict columns (MathVerse "metadata") as their Python repr
                parsed = ast.literal_eval(v.strip())
                v = parsed if isinstance(parsed, dict) else v
            except (ValueError, SyntaxError):
                pass
        if isinstance(v, dict):  # e.g. MathVista metadata {task, category, skills, ...}
            for k2, v2 in v.items():
                if isinstance(v2, (str, int, float, bool)) and not (isinstance(v2, str) and len(v2) > 300):
                    meta.setdefault(str(k2), v2)
                elif isinstance(v2, list) and all(isinstance(x, str) for x in v2) and len(v2) <= 20:
                    meta.setdefault(str(k2), list(v2))  # e.g. MathVista skills
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
    question, answer = need(row)
    options = parse_options(row)
    instruction = ctx.options.get("instruction", MC_INSTRUCTION)
    text = format_question(str(question), options, row.get("hint"), instruction)
    return [_task(row, ctx, _rid(row), text, to_letter_answer(answer, options), "multiple_choice", options)]


@BENCHMARKS.register("mathvista")
def mathvista_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """MathVista testmini (AI4Math/MathVista or VLMEvalKit MathVista_MINI)."""
    question, answer = need(row)
    options = parse_options(row)
    qtype = str(row.get("question_type") or ("multi_choice" if options else "free_form"))
    meta = {"question_type": qtype, "answer_text": str(answer)}
    if qtype == "multi_choice" and options:
        text = format_question(str(question), options, None, MC_INSTRUCTION)
        truth = option_answer(answer, options, row.get("answer_option"))
        return [_task(row, ctx, _rid(row), text, truth, "multiple_choice", options, meta)]
    unit = row.get("unit")
    instruction = "Answer with the final value only" + (f" (unit: {unit})." if not is_missing(unit) else ".")
    text = format_question(str(question), {}, None, instruction)
    return [_task(row, ctx, _rid(row), text, str(answer), "math", None, meta)]


@BENCHMARKS.register("mathverse")
def mathverse_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """MathVerse testmini: options live inside the question text; ``problem_version`` kept."""
    question, answer = need(row, ("query_wo", "question", "query_cot", "text"))
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
    question, answer = need(row)
    atype = str(row.get("answer_type") or "").lower()
    rid = _rid(row)
    meta = {"qid": str(row.get("qid", rid.split("_")[0])), "answer_type": atype}
    if "choice" in atype:
        options = parse_options(row)
        text = format_question(str(question), options, None, MC_INSTRUCTION)
        return [_task(row, ctx, rid, text, to_letter_answer(answer, options), "multiple_choice", options, meta)]
    verifier = "numeric" if "float" in atype or "int" in atype else free_form_verifier(str(answer))
    return [_task(row, ctx, rid, str(question), str(answer), verifier, None, meta)]


# ----------------------------------------------------------------------------- loading
def load_benchmark(name: str, loader: str, path: str | None = None, url: str | None = None,
                   hub_id: str | None = None, hub_config: str | None = None, split: str | None = None,
                   data_source: str | None = None, category: str = "perception",
                   loader_options: dict[str, Any] | None = None, limit: int | None = None,
                   cache_dir: str | None = None, images: bool = True, rows: list[dict[str, Any]] | None = None,
                   origin: str | None = None, **_: Any) -> LoadedBenchmark:
    """Read and convert a benchmark (see :func:`metis.eval.formats.open_source` for where from). Extra YAML keys
    (metric settings) are ignored here. ``limit`` keeps the first N tasks; ``images=False`` skips decoding
    them (score-only runs); ``rows`` (with ``origin``) replace the data source (the ground truth a
    prediction file carries). Raises :class:`EvalError` (one line naming the data) when no row is usable."""
    convert: Callable[[dict[str, Any], RowContext], list[Task]] = BENCHMARKS.get(loader)
    source = RowSource(rows, None, origin or "rows") if rows is not None else \
        open_source(name, path, url, hub_id, hub_config, split, cache_dir)
    shared = {}
    for row in source.rows:  # VLMEvalKit stores a repeated image once; others point at its index
        if isinstance(row, dict) and isinstance(row.get("image"), str) and len(row["image"]) > 64:
            idx = row.get("index")
            if not is_missing(idx):
                shared[str(idx).strip()] = row["image"]
    ctx = RowContext(name, data_source or name, category, str(source.base_dir) if source.base_dir else None,
                     shared, dict(loader_options or {}), images)
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
    if not tasks:
        reasons = Counter(s["reason"] for s in skipped).most_common(1)
        why = f"; most common: {reasons[0][0]} ({reasons[0][1]} rows)" if reasons else ""
        raise EvalError(f"benchmark {name}: none of the {len(source.rows)} rows of {source.origin} could be used{why}")
    for s in skipped:
        log.warning("%s: skipped %s: %s", name, s["row"], s["reason"])
    log.info("%s: %d tasks from %s (%d rows skipped)", name, len(tasks), source.origin, len(skipped))
    return LoadedBenchmark(name, tasks, skipped, source.origin)


from metis.eval import charxiv as _charxiv  # noqa: E402,F401  (registers the "charxiv" loader)
