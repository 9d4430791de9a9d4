"""Script for test_logprob_memory: peak memory of the chunked log-probs, 150k-token vocabulary.

Usage: python logprob_memory_run.py <cache_dir> <response_tokens> <chunk_tokens> <out.json>
Runs in its own process so that the peak resident memory (ru_maxrss) is this computation's.
"""

from __future__ import annotations

import copy
import json
import resource
import sys

import torch

from metis.agent.logprobs import response_logprobs
from metis.core.trajectory import EncodedImages, Trajectory
from metis.core.task import Task
from metis.models import build_policy

VOCAB = 150_000


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def vm_hwm_mb() -> float:
    """Peak resident size since the last reset (``/proc/self/clear_refs``), in MB."""
    with open("/proc/self/status") as fh:
        line = next(x for x in fh if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def big_vocab_model(cache: str):
    from transformers import Qwen3VLForConditionalGeneration

    tiny, _ = build_policy(tiny={}, cache_dir=cache, dtype="float32", attn_implementation="sdpa")
    config = copy.deepcopy(tiny.config)
    config.text_config.vocab_size = VOCAB
    torch.manual_seed(0)
    return Qwen3VLForConditionalGeneration(config).train()


def trajectory(prompt: int, response: int, seed: int = 0) -> Trajectory:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 1500, (prompt + response,), generator=g).tolist()
    return Trajectory(task=Task(id="m", question="", images=[], answer=""), traj_id="m", group_id=0,
                      prompt_ids=ids[:prompt], images=[], encoded=EncodedImages.empty(),
                      response_ids=ids[prompt:], response_mask=[1] * response)


def main(cache: str, response: int, chunk: int, out: str) -> None:
    torch.set_num_threads(2)
    model = big_vocab_model(cache)
    trajs = [trajectory(32, response)]
    response_logprobs(model, [trajectory(8, 8, seed=1)], 0, with_entropy=True, shared_prompt=False,
                      chunk_tokens=chunk)[0].sum().backward()  # warm-up: gradients allocated once
    base = rss_mb()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # ru_maxrss is the lifetime peak (building the 150k-vocabulary model can top the computation):
    # reset the kernel's peak resident size (VmHWM) and read it back after the computation
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    logp, ent = response_logprobs(model, trajs, 0, with_entropy=True, shared_prompt=False, chunk_tokens=chunk)
    (logp.sum() + 0.01 * ent.sum()).backward()
    peak = vm_hwm_mb()
    json.dump({"base_mb": base, "peak_mb": peak, "peak_before_mb": peak0, "extra_mb": peak - max(base, 0.0),
               "full_logits_mb": response * VOCAB * 4 / 2**20}, open(out, "w"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
