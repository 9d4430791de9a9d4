"""The one multi-turn rollout loop that training, evaluation and curation all call.

Each turn, every live trajectory is extended by the engine in one batch until ``</tool_call>``
or ``<|im_end|>``; tool calls of the batch run concurrently (with an engine that reports finished
rows early, a tool call starts while the other rows are still decoding); observations are appended
as forced tokens (mask 0), so the loss mask falls out of the token bookkeeping.

An engine that takes requests one at a time (``submit`` / ``poll`` / ``pending``: vLLM) runs
without a barrier per turn: a trajectory's tool call starts when its turn ends, and its next
turn is submitted when its tool call returns, whatever the other trajectories are doing.
"""

from __future__ import annotations

import inspect
import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from metis.agent.engines import Engine
from metis.core.format import (
    ParseError, build_system_prompt, error_observation, observation_turn, parse_tool_call, sanitize_observation,
)
from metis.core.task import Task
from metis.core.trajectory import EncodedImages, Trajectory
from metis.rl.rewards import extract_answer

log = logging.getLogger(__name__)


@dataclass
class RolloutConfig:
    max_turns: int = 4  # assistant turns per trajectory (the paper: 10)
    max_new_tokens: int = 96  # per turn
    max_response_tokens: int = 384  # model + observation tokens after the prompt
    max_prompt_tokens: int = 4096
    tool_workers: int = 8
    max_prompt_images: int = 8  # a task with more images is skipped (reported)
    max_images_per_turn: int = 8  # images an observation may add (more are dropped, the text says so)

    def max_images(self) -> int:
        """Images one trajectory can hold: the prompt's and one observation per turn but the first."""
        return self.max_prompt_images + max(0, self.max_turns - 1) * self.max_images_per_turn


class AgentLoop:
    """Runs tasks through the policy and the tools, ``n`` rollouts per task."""

    def __init__(self, engine: Engine, toolbox, processor, config: RolloutConfig | None = None,
                 system_prompt: str | None = None) -> None:
        self.engine, self.toolbox, self.processor = engine, toolbox, processor
        self.config = config or RolloutConfig()
        self.system_prompt = system_prompt or build_system_prompt(toolbox.specs())
        tok = processor.tokenizer
        self.stop_ids = [tok.convert_tokens_to_ids("<|im_end|>")]
        self.tool_call_end_id = tok.convert_tokens_to_ids("</tool_call>")
        if isinstance(self.tool_call_end_id, int) and self.tool_call_end_id != tok.unk_token_id:
            self.stop_ids.append(self.tool_call_end_id)
        self._counter = 0
        if hasattr(engine, "set_limits"):  # e.g. vLLM's images-per-prompt limit
            engine.set_limits(max_images_per_prompt=self.config.max_images())
        self.stats = {"tool_wait_s": 0.0}  # time the loop sat waiting for tool results (not overlapped)
        self.skipped: list[dict[str, str]] = []  # tasks that could not start, with the reason

    # ---- encoding -------------------------------------------------------------------------
    def _encode(self, text: str, images: list) -> tuple[list[int], EncodedImages]:
        enc = self.processor(text=[text], images=images or None, return_tensors="pt")
        ids = enc["input_ids"][0].tolist()
        if images:
            return ids, EncodedImages(torch.as_tensor(enc["pixel_values"]), torch.as_tensor(enc["image_grid_thw"]))
        return ids, EncodedImages.empty()

    def encode_prompt(self, task: Task) -> tuple[list[int], EncodedImages, list]:
        """The prompt tokens and images of ``task`` (shared by all rollouts of the task)."""
        messages = [{"role": "system", "content": task.meta.get("system_prompt") or self.system_prompt},
                    {"role": "user", "content": task.content()}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images = [im.convert("RGB") for im in task.images]
        if len(images) > self.config.max_prompt_images:
            raise ValueError(f"task {task.id}: {len(images)} images > rollout.loop.max_prompt_images")
        ids, encoded = self._encode(text, images)
        if len(ids) > self.config.max_prompt_tokens:
            raise ValueError(f"task {task.id}: prompt has {len(ids)} tokens > max_prompt_tokens")
        return ids, encoded, images

    def start(self, task: Task, group_id: int, prompt=None) -> Trajectory:
        ids, encoded, images = prompt if prompt is not None else self.encode_prompt(task)
        ids = list(ids)
        self._counter += 1
        traj = Trajectory(task=task, traj_id=f"{task.id}#{self._counter}", group_id=group_id,
                          prompt_ids=ids, images=list(images), encoded=encoded)
        meta = {"id": task.id, "data_source": task.data_source, **task.meta}
        self.toolbox.start(traj.traj_id, images, meta=meta)  # image_search keys cached results by meta
        return traj

    # ---- the loop -------------------------------------------------------------------------
    def run(self, tasks: Sequence[Task], n: int = 1, group_offset: int = 0, greedy: bool = False) -> list[Trajectory]:
        """``n`` rollouts for each task; rollouts of task ``k`` get ``group_id = group_offset + k``."""
        trajs: list[Trajectory] = []
        try:
            for k, task in enumerate(tasks):
                try:
                    prompt = self.encode_prompt(task)  # once per task: the group shares it
                    group = [self.start(task, group_offset + k, prompt) for _ in range(n)]
                except Exception as err:  # a bad prompt (too long, corrupt image) is skipped, not fatal
                    log.warning("skipping task %s: %s: %s", task.id, type(err).__name__, err)
                    self.skipped.append({"task_id": task.id, "error": f"{type(err).__name__}: {err}"})
                    continue
                trajs.extend(group)
            before = getattr(self.engine, "before_rollout", None)
            if before is not None:
                before()  # every rank, even with no trajectories: a weight push may be a collective
            with ThreadPoolExecutor(max_workers=self.config.tool_workers) as pool:
                if hasattr(self.engine, "submit"):
                    try:
                        self._run_per_trajectory(trajs, pool, greedy)
                    except BaseException:
                        self.engine.cancel()  # no request of this run may come back in the next
                        raise
                else:
                    self._run_per_turn(trajs, pool, greedy)
                for traj in trajs:
                    if not traj.done:  # out of turns right after a tool call
                        traj.done, traj.truncated = True, True
        finally:
            self._release(trajs)
            for traj in trajs:
                self.toolbox.end(traj.traj_id)
        for traj in trajs:
            traj.final_answer = extract_answer(traj.response_text)
        return trajs

    def _run_per_turn(self, trajs: list[Trajectory], pool: ThreadPoolExecutor, greedy: bool) -> None:
        """Every live trajectory's next turn in one engine call per turn."""
        for _ in range(self.config.max_turns):
            live = [t for t in trajs if not t.done]
            if not live:
                break
            budgets = [self.config.max_response_tokens - len(t.response_ids) for t in live]
            early: dict[int, Future] = {}

            def on_finish(i: int, ids: list[int], live=live, budgets=budgets, early=early) -> None:
                # a finished tool call starts now, while the other rows keep decoding
                ids = ids[: max(budgets[i], 0)]
                if ids and ids[-1] == self.tool_call_end_id:
                    text = self.processor.tokenizer.decode(ids, skip_special_tokens=False)
                    early[i] = pool.submit(self._call_tool, live[i], text)

            kwargs = {"on_finish": on_finish} if self._streams() else {}
            new_tokens = self.engine.generate(live, max(1, min(self.config.max_new_tokens, max(budgets))),
                                              self.stop_ids, greedy=greedy, **kwargs)
            engine_logprobs = getattr(self.engine, "last_logprobs", None) or {}
            calls = []
            for i, (traj, ids) in enumerate(zip(live, new_tokens)):
                if self._add_turn(traj, ids, engine_logprobs.get(traj.traj_id)):
                    calls.append((traj, early.get(i) or pool.submit(self._call_tool, traj)))
            t_wait = time.perf_counter()
            results = [future.result() for _, future in calls]
            self.stats["tool_wait_s"] += time.perf_counter() - t_wait
            for (traj, _), obs in zip(calls, results):  # appended in batch order: deterministic
                self._append_observation(traj, obs)
            self._release([t for t in live if t.done])

    def _run_per_trajectory(self, trajs: list[Trajectory], pool: ThreadPoolExecutor, greedy: bool) -> None:
        """Each trajectory goes on as soon as its own turn or tool call is done (no turn barrier)."""
        engine, tools = self.engine, {}

        def next_turn(traj: Trajectory) -> None:
            budget = self.config.max_response_tokens - len(traj.response_ids)
            engine.submit(traj, max(1, min(self.config.max_new_tokens, budget)), self.stop_ids, greedy)

        for traj in trajs:
            next_turn(traj)
        while engine.pending() or tools:
            for traj, ids, logprobs in (engine.poll() if engine.pending() else []):
                if self._add_turn(traj, ids, logprobs):
                    tools[pool.submit(self._call_tool, traj)] = traj
            if tools and not engine.pending():  # nothing to decode: wait for a tool call
                t_wait = time.perf_counter()
                wait(list(tools), return_when=FIRST_COMPLETED)
                self.stats["tool_wait_s"] += time.perf_counter() - t_wait
            for future in [f for f in tools if f.done()]:
                traj = tools.pop(future)
                self._append_observation(traj, future.result())
                if not traj.done and traj.num_turns < self.config.max_turns:
                    next_turn(traj)
                elif not traj.done:
                    traj.done, traj.truncated = True, True  # out of turns right after a tool call
            self._release([t for t in trajs if t.done])

    def _add_turn(self, traj: Trajectory, ids: list[int], engine_logprobs: list[float] | None) -> bool:
        """Append the model's turn (cut to the response budget); whether it ends with a tool call."""
        ids = ids[: max(self.config.max_response_tokens - len(traj.response_ids), 0)]
        if engine_logprobs:
            traj.engine_logprobs.extend(engine_logprobs[: len(ids)])
        traj.add_model_tokens(ids, self.processor.tokenizer.decode(ids, skip_special_tokens=False))
        if ids and ids[-1] == self.tool_call_end_id:
            return True
        traj.done = True
        traj.truncated = not ids or ids[-1] not in self.stop_ids
        return False

    def _streams(self) -> bool:
        """Whether the engine reports finished rows during ``generate`` (``on_finish``)."""
        try:
            return "on_finish" in inspect.signature(self.engine.generate).parameters
        except (TypeError, ValueError):
            return False

    def _release(self, trajs: list[Trajectory]) -> None:
        release = getattr(self.engine, "release", None)
        if release is not None and trajs:
            release(trajs)

    def _call_tool(self, traj: Trajectory, turn_text: str | None = None):
        call = parse_tool_call(traj.turn_texts[-1] if turn_text is None else turn_text)
        traj.num_tool_calls += 1  # failed and refused calls count too (docs/paper.md, "HDPO")
        if isinstance(call, ParseError):
            return {"tool": None, "arguments": None, "text": error_observation(call.message), "images": [],
                    "error": "parse_error"}
        try:  # a tool that raises anyway costs this call, never the step
            obs = self.toolbox.execute(traj.traj_id, call.name, call.arguments)
        except Exception as exc:  # noqa: BLE001
            return {"tool": call.name, "arguments": call.arguments, "images": [], "error": "execution_error",
                    "text": error_observation(f"{type(exc).__name__}: {str(exc)[:500]}")}
        return {"tool": call.name, "arguments": call.arguments, "text": obs.text, "images": list(obs.images),
                "error": obs.error}

    def _append_observation(self, traj: Trajectory, obs: dict[str, Any]) -> None:
        images = [im.convert("RGB") for im in obs["images"]]
        extra = len(images) - self.config.max_images_per_turn
        if extra > 0:  # the engine's images-per-prompt limit is derived from this cap
            images = images[: self.config.max_images_per_turn]
            obs = {**obs, "text": f"{obs['text']}\n[{extra} more images not shown: at most "
                                  f"{self.config.max_images_per_turn} per tool call]"}
        text = observation_turn(sanitize_observation(obs["text"], len(images)))
        ids, encoded = self._encode(text, images)
        traj.tool_errors += obs["error"] is not None
        traj.observations.append({k: obs[k] for k in ("tool", "arguments", "text", "error")})
        if len(traj.response_ids) + len(ids) >= self.config.max_response_tokens:
            traj.done, traj.truncated = True, True  # no room left to answer after this observation
            return
        traj.add_forced_tokens(ids, images, encoded)
