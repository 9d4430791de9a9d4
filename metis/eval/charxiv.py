"""CharXiv rows as tasks: the HF layout (``princeton-nlp/CharXiv``: one figure per row, four
descriptive template ids and one reasoning question) or VLMEvalKit's exploded TSVs
(``CharXiv_descriptive_val`` / ``CharXiv_reasoning_val``: one question per row with ``qid`` or
``inst_category`` and the benchmark's own ``grading_query``), kept in ``Task.meta``."""

from __future__ import annotations

import re
from typing import Any

from metis.core.task import Task
from metis.eval.benchmarks import BENCHMARKS, RowContext, _rid, _task, free_form_verifier, need, pick
from metis.eval.formats import BadRow, is_missing

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
# CharXiv's own reporting groups: descriptive template id -> category
CHARXIV_DQ_CATEGORIES = {**dict.fromkeys(range(1, 8), "information_extraction"),
                         **dict.fromkeys((8, 9, 13, 14, 15), "enumeration"), **dict.fromkeys((10, 12, 19), "counting"),
                         **dict.fromkeys((11, 16, 18), "pattern_recognition"), 17: "compositionality"}


def _charxiv_prefix(row: dict[str, Any], qid: int) -> str:
    try:
        n = int(row.get("num_subplots") or 1)
    except (TypeError, ValueError):
        n = 1
    if n > 1 and qid not in (18, 19):
        return f"For the subplot at row {row.get('subplot_row')} and column {row.get('subplot_col')}, "
    return ""


def _charxiv_tsv_meta(row: dict[str, Any]) -> dict[str, Any]:
    """CharXiv's categories from a VLMEvalKit TSV (``qid`` descriptive template, ``inst_category``
    reasoning type) under the names the HF layout gives them, and the row's own ``grading_query``."""
    meta: dict[str, Any] = {}
    for key, table, name in (("qid", CHARXIV_DQ_CATEGORIES, "category"),
                             ("inst_category", CHARXIV_ANSWER_TYPES, "answer_type")):
        try:
            value = int(float(row[key])) if not is_missing(row.get(key)) else None
        except (TypeError, ValueError):
            value = None
        if value is not None:
            meta[name] = table.get(value, str(value))
            if key == "qid":
                meta["template"] = value
    if not is_missing(row.get("grading_query")):
        meta["grading_query"] = str(row["grading_query"])
    return meta


@BENCHMARKS.register("charxiv")
def charxiv_rows(row: dict[str, Any], ctx: RowContext) -> list[Task]:
    """CharXiv (princeton-nlp/CharXiv: one figure per row, four descriptive template ids and one
    reasoning question) or an already exploded TSV (question/answer columns).
    ``loader_options.mode``: descriptive | reasoning."""
    mode = ctx.options.get("mode", "reasoning")
    base = pick(row, ("figure_id", "original_id", "index", "id", "figure_path"))
    base_id = "" if base is None else str(base).strip()
    if "reasoning_q" not in row and "descriptive_q1" not in row:  # exploded (VLMEvalKit TSV)
        q, a = need(row)
        return [_task(row, ctx, _rid(row), str(q), str(a), free_form_verifier(str(a)), None, _charxiv_tsv_meta(row))]
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
                     free_form_verifier(str(a)), None, {"template": qid, "category": CHARXIV_DQ_CATEGORIES[qid]})
        images = task.images  # decode the figure once per row
        tasks.append(task)
    if not tasks:
        raise BadRow("no descriptive question")
    return tasks
