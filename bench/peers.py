"""The contenders Metis is measured against, on the same model, prompts, tool and sampling:

* ``naive_rollouts``: one trajectory at a time, the whole text re-templated and re-encoded every
  turn, ``model.generate`` at batch 1 - the loop a researcher writes first;
* ``TRLPeer``: TRL's ``GRPOTrainer`` with ``tools=[python]`` (its generation-with-tools loop and its
  GRPO step), in the same process.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import CACHE, TOOL_CODE, Timers, install_forcer
from metis.agent.engines import cut_at_stop, suppressed_ids
from metis.core.format import build_system_prompt, observation_turn, parse_tool_call, sanitize_observation


# ---- naive loop ---------------------------------------------------------------------------------

def naive_rollouts(model, processor, toolbox, tasks, n: int, max_turns: int, max_new_tokens: int,
                   timers: Timers | None = None, temperature: float = 1.0) -> dict:
    """Every rollout alone; every turn re-templates and re-encodes the whole conversation."""
    tok = processor.tokenizer
    stop_ids = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("</tool_call>")]
    system = build_system_prompt(toolbox.specs())
    banned = suppressed_ids(tok)
    timers = timers or Timers()
    model_tokens = turns = calls = 0
    was_training = model.training
    model.eval()
    try:
        for task in tasks:
            for g in range(n):
                traj_id = f"naive-{task.id}-{g}"
                images = [im.convert("RGB") for im in task.images]
                toolbox.start(traj_id, images, meta={"id": task.id})
                messages = [{"role": "system", "content": system}, {"role": "user", "content": task.content()}]
                text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                try:
                    for _ in range(max_turns):
                        enc = processor(text=[text], images=images or None, return_tensors="pt")
                        enc["mm_token_type_ids"] = (enc["input_ids"] == model.config.image_token_id).long()
                        with timers.time("generation"), torch.no_grad():
                            out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                                                 pad_token_id=tok.pad_token_id or 0, do_sample=temperature > 0,
                                                 temperature=temperature, top_p=1.0, top_k=0,
                                                 suppress_tokens=banned)
                        new = cut_at_stop(out[0, enc["input_ids"].shape[1]:].tolist(), stop_ids)
                        model_tokens += len(new)
                        turns += 1
                        turn_text = tok.decode(new, skip_special_tokens=False)
                        text += turn_text
                        if not new or new[-1] != stop_ids[1]:
                            break
                        calls += 1
                        call = parse_tool_call(turn_text)
                        with timers.time("tools"):
                            obs = toolbox.execute(traj_id, call.name, call.arguments)
                        obs_images = [im.convert("RGB") for im in obs.images]
                        images += obs_images
                        text += observation_turn(sanitize_observation(obs.text, len(obs_images)))
                finally:
                    toolbox.end(traj_id)
    finally:
        model.train(was_training)
    return {"model_tokens": model_tokens, "trajectories": len(tasks) * n, "turns": turns, "tool_calls": calls}


# ---- TRL ------------------------------------------------------------------------------------------

class TRLPeer:
    """TRL's GRPOTrainer on the tiny model, with the same Python tool and the same scripted policy.

    Set-up notes (each needed on this stack): TRL's bundled Qwen3-VL chat template (it rejects a
    custom one with tools); the tokenizer's EOS set to ``<|im_end|>`` as in the real Qwen3-VL
    tokenizer (the tiny one says ``<|endoftext|>``, which TRL would wait for); the image processor
    asked for ``pt`` tensors (TRL's tool loop fails on numpy arrays). TRL tools are stateless
    functions, so the Python tool runs every TRL call in one persistent sandboxed interpreter
    (cheaper than Metis' one interpreter per trajectory).
    """

    def __init__(self, model, model_dir: str, toolbox, forcer, group_size: int, batch_prompts: int,
                 max_completion_length: int, lr: float = 1e-4, temperature: float = 1.0, steps: int = 3,
                 timers: Timers | None = None) -> None:
        import trl
        from transformers import AutoProcessor

        import metis.models.processor  # noqa: F401  (registers the image-only processor)
        from metis.models.processor import MetisQwen3VLProcessor

        self.timers = timers or Timers()
        processor = MetisQwen3VLProcessor.from_pretrained(model_dir)
        template = (Path(trl.__file__).parent / "chat_templates" / "qwen3_vl.jinja").read_text()
        processor.chat_template = template
        processor.tokenizer.chat_template = template
        processor.tokenizer.eos_token = "<|im_end|>"
        orig_ip = processor.image_processor.__class__.__call__

        def pt_images(ip, *a, **kw):
            kw["return_tensors"] = "pt"
            return orig_ip(ip, *a, **kw)

        processor.image_processor.__class__ = type("PtImages", (processor.image_processor.__class__,),
                                                   {"__call__": pt_images})
        self.processor = processor
        self.toolbox, self.model = toolbox, model
        install_forcer(model, forcer)
        timers_ = self.timers
        orig_generate = model.generate

        def timed_generate(*a, **kw):
            with timers_.time("generation"):
                return orig_generate(*a, **kw)

        model.generate = timed_generate
        toolbox.start("trl-shared", [], meta={"id": "trl"})
        tool = toolbox.tools["python"]  # directly: ToolBox's per-trajectory call limit would refuse

        def python(code: str) -> str:
            """Execute Python code in a sandboxed interpreter and return what it prints.

            Args:
                code: the Python source to run.
            """
            with timers_.time("tools"):
                return tool.call("trl-shared", {"code": code}).text

        self.python = python
        self.group_size, self.batch_prompts = group_size, batch_prompts
        self.max_completion_length = max_completion_length
        self.lr, self.temperature, self.steps = lr, temperature, steps
        self.trainer = None

    def build(self, tasks, steps: int | None = None) -> None:
        from datasets import Dataset
        from trl import GRPOConfig, GRPOTrainer

        rows = [{"prompt": [{"role": "user", "content": [{"type": "image"},
                                                         {"type": "text", "text": t.question.replace("<image>", "")}]}],
                 "images": [t.images[0].convert("RGB")], "answer": t.answer} for t in tasks]
        dataset = Dataset.from_list(rows * 64)

        def reward(completions, answer, **kw):
            return [float(str(a) in str(c[-1].get("content", ""))) for c, a in zip(completions, answer)]

        args = GRPOConfig(
            output_dir=tempfile.mkdtemp(prefix="trl-bench-", dir=str(CACHE)), use_cpu=True, bf16=False,
            per_device_train_batch_size=self.group_size * self.batch_prompts, num_generations=self.group_size,
            gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
            max_completion_length=self.max_completion_length, max_steps=steps or self.steps,
            learning_rate=self.lr, beta=0.0, loss_type="dapo", temperature=self.temperature, top_p=1.0, top_k=0,
            logging_steps=1, report_to=[], save_strategy="no", gradient_checkpointing=False,
            dataloader_num_workers=0, shuffle_dataset=False, seed=0, disable_tqdm=True,
        )
        self.trainer = GRPOTrainer(model=self.model, reward_funcs=[reward], args=args, train_dataset=dataset,
                                   processing_class=self.processor, tools=[self.python])
        t = self.timers
        t.wrap(self.trainer, "_get_per_token_logps_and_entropies", "logprob_forward")
        orig_backward = self.trainer.accelerator.backward

        def backward(*a, **kw):
            with t.time("backward"):
                return orig_backward(*a, **kw)

        self.trainer.accelerator.backward = backward

    def rollout(self, tasks, n: int) -> dict:
        """One batch through TRL's generation-with-tools loop (``_generate``), untimed set-up excluded."""
        prompts = []
        for t in tasks:
            msg = [{"role": "user", "content": [{"type": "image", "image": t.images[0].convert("RGB")},
                                                {"type": "text", "text": t.question.replace("<image>", "")}]}]
            prompts += [msg] * n
        trainer = self.trainer
        trainer._sync_tool_dicts = [{"python": self.python} for _ in prompts]  # as _generate_and_score_completions
        trainer._async_tool_dicts = [{} for _ in prompts]
        trainer.model.eval()
        try:
            with torch.no_grad():
                out = trainer._generate(prompts)
        finally:
            trainer.model.train()
        prompt_ids, completion_ids, tool_mask = out[0], out[1], out[2]
        model_tokens = sum(sum(m) for m in tool_mask) if tool_mask is not None else sum(map(len, completion_ids))
        return {"model_tokens": model_tokens, "trajectories": len(prompts),
                "prompt_tokens": sum(map(len, prompt_ids)) / len(prompt_ids)}

    def train_steps(self) -> list[float]:
        """Runs ``steps`` GRPO steps; returns the wall time of each."""
        from transformers import TrainerCallback

        times: list[float] = []
        pool = self.toolbox.tools.get("python")

        class StepTimer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                times.append(time.perf_counter() - self.t0)

        cb = StepTimer()
        self.trainer.add_callback(cb)
        try:
            self.trainer.train()
        finally:
            self.trainer.remove_callback(cb)
        del pool
        return times


__all__ = ["naive_rollouts", "TRLPeer", "TOOL_CODE"]
