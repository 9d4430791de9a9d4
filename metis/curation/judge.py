"""Stage ``judge``: an LLM judge scores each trajectory with the rubric in ``prompts/judge_rubric.md``.

Per trajectory the judge (any OpenAI-compatible server, :class:`metis.io.chat_client.ChatClient`)
sees the question, the ground truth (or, when the data set has none, a line saying so: a truth
taken from the trajectory's own answer would tell the judge nothing), the final answer, a
transcript (assistant turns, each tool call's code or arguments, each observation, ``<image k>``
markers) and the images (input and observation images, downscaled, as ``image_url`` data URIs). It returns ``visual_relevance`` and
``reasoning_coherence`` (1-5) and, per tool call, ``justified`` with a reason. A trajectory is kept
when every threshold holds; otherwise it is dropped with the first failing reason, in this order:
``unjustified_tool_call`` (fraction of justified calls < ``min_justified_fraction``),
``low_visual_relevance``, ``incoherent_reasoning``. The scores, per-call verdicts and the judge's
summary are stored with the kept sample (``meta["curation"]["judge"]``) and in ``results.jsonl``.

Failures: an unreachable judge (or one refusing the requests) aborts the stage; everything judged
so far is kept and a rerun resumes. A judge that answers but never parseably gives that sample an
``error`` row, retried by the next run. Replies are cached on disk under the rubric's hash, so a
rerun (or a run killed right after a request) never asks twice for the same trajectory.

Deliberate simplifications: a reply listing fewer calls than the trajectory has counts the missing
ones as unjustified; at most ``max_images`` images are sent; the transcript is cut to
``max_transcript_chars``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from metis.data.samples import Sample
from metis.io.chat_client import BadReply
from metis.curation.reexecute import split_images
from metis.curation.runner import Stage, StageAborted
from metis.data.schema import TrajectoryRecord, parts_text
from metis.io.judge import JudgeUnavailable

RUBRIC_PATH = Path(__file__).resolve().parent / "prompts" / "judge_rubric.md"
_JSON_RE = re.compile(r"\{.*\}", re.DOTALL)
_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def load_rubric(path: str | Path | None = None) -> str:
    return Path(path or RUBRIC_PATH).read_text(encoding="utf-8")


def render_transcript(record: TrajectoryRecord, max_chars: int = 12000) -> str:
    """The non-system turns as text, tool calls spelled out, ``<image k>`` for each image part."""
    lines, k_img, k_call, k_obs = [], 0, 0, 0

    def text_of(parts: list[dict[str, Any]]) -> str:
        nonlocal k_img
        out = []
        for p in parts:
            if p["type"] == "image":
                k_img += 1
                out.append(f"<image {k_img}>")
            else:
                out.append(p.get("text") or "")
        return "".join(out).strip()

    for m in record.messages:
        if m["role"] == "system":
            continue
        if m["role"] == "tool":
            k_obs += 1
            lines += [f"[observation {k_obs}]", text_of(m["content"])]
        elif m["role"] == "assistant":
            lines += ["[assistant]", text_of(m["content"])]
            call = m.get("tool_call")
            if call:
                k_call += 1
                args = call.get("arguments") or {}
                body = args["code"] if isinstance(args.get("code"), str) else json.dumps(args, ensure_ascii=False)
                lines += [f"[tool call {k_call}: {call.get('name')}]", body]
        else:
            lines += [f"[{m['role']}]", text_of(m["content"])]
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[: max_chars - 40] + "\n[... transcript cut ...]"


def data_uri(img: Image.Image, max_side: int = 768) -> str:
    img = img.convert("RGB")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def parse_judgement(reply: str, num_calls: int) -> dict[str, Any] | None:
    """The judge's JSON as ``{visual_relevance, reasoning_coherence, tool_calls, summary}``; None if unusable."""
    m = _JSON_RE.search(_THINK_RE.sub(" ", reply or ""))
    if m is None:
        return None
    try:
        obj = json.loads(m.group(0))
        vis, coh = int(obj["visual_relevance"]), int(obj["reasoning_coherence"])
    except (ValueError, KeyError, TypeError):
        return None
    if not (1 <= vis <= 5 and 1 <= coh <= 5):
        return None
    given = obj.get("tool_calls") or []
    if not isinstance(given, list):
        return None
    calls = []
    for i in range(num_calls):
        item = given[i] if i < len(given) and isinstance(given[i], dict) else None
        if item is None:
            calls.append({"call": i + 1, "justified": False, "reason": "not assessed by the judge"})
            continue
        just = item.get("justified")
        just = just if isinstance(just, bool) else str(just).strip().lower() in ("true", "yes", "1")
        calls.append({"call": i + 1, "justified": just, "reason": str(item.get("reason") or "")[:500]})
    return {"visual_relevance": vis, "reasoning_coherence": coh, "tool_calls": calls,
            "summary": str(obj.get("summary") or "")[:1000]}


class JudgeStage(Stage):
    """Keep trajectories whose tool use an LLM judge finds justified, visually relevant and coherent."""

    name = "judge"
    reasons = {
        "unjustified_tool_call": "the judge found a tool call unjustified (fraction < min_justified_fraction)",
        "low_visual_relevance": "visual_relevance < min_visual_relevance",
        "incoherent_reasoning": "reasoning_coherence < min_reasoning_coherence",
        "judge_unparseable": "the judge answered, but never with the rubric's JSON (retried on rerun)",
    }

    def __init__(self, client: Any, rubric_path: str | None = None, min_visual_relevance: int = 3,
                 min_reasoning_coherence: int = 3, min_justified_fraction: float = 1.0, concurrency: int = 8,
                 send_images: bool = True, max_images: int = 4, image_max_side: int = 768,
                 max_transcript_chars: int = 12000) -> None:
        self.rubric = load_rubric(rubric_path)
        self.rubric_version = hashlib.sha256(self.rubric.encode()).hexdigest()[:12]
        self.client_cfg, self.client = client, None
        self.counts: dict[str, int] = {}
        self.min_vis, self.min_coh = int(min_visual_relevance), int(min_reasoning_coherence)
        self.min_justified = float(min_justified_fraction)
        self.concurrency, self.send_images = max(1, int(concurrency)), bool(send_images)
        self.max_images, self.image_max_side, self.max_chars = int(max_images), int(image_max_side), int(max_transcript_chars)

    def describe(self) -> dict[str, Any]:
        url = getattr(self.client, "url", None) or (self.client_cfg.get("base_url") if hasattr(self.client_cfg, "get") else None)
        return {"judge_url": url, "rubric_version": self.rubric_version, "min_visual_relevance": self.min_vis,
                "min_reasoning_coherence": self.min_coh, "min_justified_fraction": self.min_justified,
                "send_images": self.send_images}

    def open(self) -> None:
        if self.client is None:
            if hasattr(self.client_cfg, "complete"):
                self.client = self.client_cfg
            else:
                import hydra

                self.client = hydra.utils.instantiate(self.client_cfg, prompt_version=f"rubric-{self.rubric_version}")

    def close(self) -> None:
        if self.client is not None:
            self.counts = {"judge_requests_this_run": self.client.requests,
                           "judge_cache_hits_this_run": self.client.cache_hits}
            if not hasattr(self.client_cfg, "complete"):
                self.client.close()
        self.client = None

    def messages(self, rec: TrajectoryRecord) -> list[dict[str, Any]]:
        user = next((m for m in rec.messages if m["role"] == "user"), None)
        question = parts_text(user["content"]).replace("<image>", "").strip() if user else ""
        inputs, per_tool = split_images(rec)
        images = inputs + [im for group in per_tool for im in group]
        truth = " | ".join(rec.ground_truth)
        if not truth or rec.meta.get("ground_truth_from") == "final_answer":
            truth = "not given by the data set (judge the final answer on the trajectory itself)"
        fields = {"sample_id": rec.id, "question": question, "ground_truth": truth,
                  "final_answer": rec.final_answer if rec.final_answer is not None else "(none)",
                  "num_tool_calls": str(rec.num_tool_calls), "num_images": str(len(images)),
                  "transcript": render_transcript(rec, self.max_chars)}
        text = self.rubric
        for key, value in fields.items():
            text = text.replace("{{" + key + "}}", value)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        if self.send_images:
            content += [{"type": "image_url", "image_url": {"url": data_uri(im, self.image_max_side)}}
                        for im in images[: self.max_images]]
        return [{"role": "user", "content": content}]

    def judge_one(self, sample: Sample) -> dict[str, Any]:
        rec = sample.record
        assert rec is not None
        n = rec.num_tool_calls
        try:
            verdict, _ = self.client.complete(self.messages(rec), lambda reply: parse_judgement(reply, n))
        except BadReply as err:
            return {"id": rec.id, "status": "error", "reason": "judge_unparseable", "details": {"detail": str(err)[:300]}}
        calls = verdict["tool_calls"]
        frac = sum(c["justified"] for c in calls) / len(calls) if calls else 1.0
        details = {"scores": {"visual_relevance": verdict["visual_relevance"],
                              "reasoning_coherence": verdict["reasoning_coherence"], "justified_fraction": round(frac, 4)},
                   "tool_calls": calls, "summary": verdict["summary"], "rubric_version": self.rubric_version}
        failing = [r for r, bad in (("unjustified_tool_call", frac < self.min_justified),
                                    ("low_visual_relevance", verdict["visual_relevance"] < self.min_vis),
                                    ("incoherent_reasoning", verdict["reasoning_coherence"] < self.min_coh)) if bad]
        if failing:
            details["failing"] = failing
        return {"id": rec.id, "status": "dropped" if failing else "kept", "reason": failing[0] if failing else None,
                "details": details}

    def process(self, samples: list[Sample]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any] | None] = [None] * len(samples)
        failure: JudgeUnavailable | None = None
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(samples))) as pool:
            futures = [pool.submit(self.judge_one, s) for s in samples]
            for i, fut in enumerate(futures):
                try:
                    rows[i] = fut.result()
                except JudgeUnavailable as err:
                    failure = failure or err
        if failure is not None:
            raise StageAborted(f"judge unavailable: {failure}", [r for r in rows if r is not None])
        return [r for r in rows if r is not None]

    def summary(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        done = [r for r in rows if r["status"] in ("kept", "dropped")]
        if not done:
            return {}
        metrics = {}
        for key in ("visual_relevance", "reasoning_coherence", "justified_fraction"):
            vals = [r["details"]["scores"][key] for r in done]
            metrics[f"mean_{key}"] = round(sum(vals) / len(vals), 4)
        metrics.update(self.counts)
        return {"metrics": metrics}
