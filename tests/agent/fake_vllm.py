"""A stand-in ``vllm`` package built from a signature table recorded from vLLM's source.

``tests/agent/vllm_api/vllm-X.Y.Z.json`` (written by ``extract.py`` from the wheel of that
release) lists the parameters of every vLLM callable the engine uses and the fields of every
record it builds or reads. :func:`build` makes a module whose classes accept exactly those
names (any other keyword is a ``TypeError``, as in vLLM, or an ``APIError`` where vLLM's own
``**kwargs`` would fail later, e.g. an unknown ``EngineArgs`` field), and which also checks the
order the engine must follow (weights woken before they are loaded, everything woken before a
request). Generation is scripted: ``respond(request_id, prompt_token_ids, params) -> token ids``.
Outputs are built through the recorded constructor signatures, so the engine reads only
attributes that exist in that release.
"""

from __future__ import annotations

import enum
import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any, Callable

API_DIR = Path(__file__).parent / "vllm_api"
VERSIONS = sorted(p.stem.split("-", 1)[1] for p in API_DIR.glob("vllm-*.json"))


class APIError(TypeError):
    """A call the recorded vLLM release would reject."""


def load(version: str) -> dict:
    return json.loads((API_DIR / f"vllm-{version}.json").read_text())


def check_call(api: dict, name: str, args: tuple, kwargs: dict, extra: list[str] | None = None) -> None:
    """Reject arguments that ``name`` does not take in that release (``extra``: the names its
    ``**kwargs`` forwards to, e.g. ``EngineArgs`` fields for ``LLM.__init__``)."""
    if name not in api["signatures"]:
        raise APIError(f"vLLM {api['version']} has no {name}")
    sig = api["signatures"][name]
    if len(args) > len(sig["positional"]) and not sig["varargs"]:
        raise APIError(f"{name} takes {len(sig['positional'])} positional arguments, got {len(args)}")
    twice = set(sig["positional"][: len(args)]) & set(kwargs)
    if twice:
        raise APIError(f"{name} got {sorted(twice)} twice")
    unknown = set(kwargs) - set(sig["positional"]) - set(sig["kwonly"])
    if unknown and not (sig["varkw"] and extra is not None and unknown <= set(extra)):
        raise APIError(f"{name} of vLLM {api['version']} takes no {sorted(unknown)}")


def record(api: dict, cls: str, kwargs: dict) -> types.SimpleNamespace:
    unknown = set(kwargs) - set(api["fields"][cls])
    if unknown:
        raise APIError(f"{cls} of vLLM {api['version']} has no field {sorted(unknown)}")
    return types.SimpleNamespace(**kwargs)


def build(version: str, respond: Callable[[str, list[int], Any], list[int]], image_token_id: int,
          tokens_per_image: Callable[[Any], int]) -> types.ModuleType:
    """A ``vllm`` module for ``version``; ``tokens_per_image(PIL image)`` is its processor's count."""
    api = load(version)
    mod = types.ModuleType("vllm")
    mod.__version__ = api["version"]
    mod.calls = []  # (what, details) in call order: the test reads the protocol from here
    mod.loaded = []  # (name, dtype) of every weight loaded
    log = mod.calls.append

    class SamplingParams(types.SimpleNamespace):
        def __init__(self, **kwargs):
            record(api, "SamplingParams", kwargs)
            super().__init__(**kwargs)

    def TokensPrompt(**kwargs):  # a TypedDict: a dict with known keys
        record(api, "TokensPrompt", kwargs)
        return dict(kwargs)

    kinds = enum.Enum("RequestOutputKind", {n: i for i, n in enumerate(api["fields"]["RequestOutputKind"])})

    class FakeModel:
        def load_weights(self, weights):
            for name, tensor in weights:
                mod.loaded.append((name, tensor.dtype))
            return {n for n, _ in mod.loaded}

    class LLMEngine:
        def __init__(self, llm):
            self.llm, self.queue = llm, []

        def add_request(self, *args, **kwargs):
            check_call(api, "LLMEngine.add_request", args, kwargs)
            request_id, prompt, params = (list(args) + [kwargs.get(k) for k in ("request_id", "prompt", "params")
                                                        ][len(args):])[:3]
            if self.llm.asleep:
                raise RuntimeError("request while the engine sleeps (wake_up with every tag first)")
            unknown = set(prompt) - set(api["fields"]["TokensPrompt"])
            if unknown:
                raise APIError(f"prompt keys {sorted(unknown)}")
            images = (prompt.get("multi_modal_data") or {}).get("image", [])
            if len(images) > self.llm.kwargs["limit_mm_per_prompt"]["image"]:
                raise ValueError("more images than limit_mm_per_prompt")
            expanded, k = [], 0
            for tok in prompt["prompt_token_ids"]:  # the processor expands each placeholder
                if tok == image_token_id:
                    expanded += [tok] * tokens_per_image(images[k])
                    k += 1
                else:
                    expanded.append(tok)
            log(("add_request", request_id))
            self.queue.append((request_id, expanded, params))

        def abort_request(self, *args, **kwargs):
            check_call(api, "LLMEngine.abort_request", args, kwargs)
            ids = set(args[0] if args else kwargs["request_ids"])
            self.queue = [q for q in self.queue if q[0] not in ids]
            log(("abort_request", sorted(ids)))

        def step(self, *args, **kwargs):
            check_call(api, "LLMEngine.step", args, kwargs)
            if not self.queue:
                return []
            request_id, prompt_ids, params = self.queue.pop(0)  # one request finishes per step
            assert params.output_kind == kinds.FINAL_ONLY
            ids = list(respond(request_id, prompt_ids, params))[: params.max_tokens]
            for i, t in enumerate(ids):
                if t in params.stop_token_ids:
                    ids = ids[: i + 1]
                    break
            logprobs = [{t: record(api, "Logprob", dict(logprob=-0.5, rank=1, decoded_token=None))} for t in ids]
            sample = record(api, "CompletionOutput", dict(index=0, text="", token_ids=ids, cumulative_logprob=None,
                                                          logprobs=logprobs, finish_reason="stop", stop_reason=None))
            args = dict(request_id=request_id, prompt=None, prompt_token_ids=prompt_ids, prompt_logprobs=None,
                        outputs=[sample], finished=True)
            check_call(api, "RequestOutput.__init__", (), args)
            return [types.SimpleNamespace(**args)]

    class LLM:
        def __init__(self, *args, **kwargs):
            check_call(api, "LLM.__init__", args, kwargs, extra=api["fields"]["EngineArgs"])
            self.kwargs = kwargs
            self.env = {k: os.environ.get(k) for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "RANK", "LOCAL_RANK",
                                                       "WORLD_SIZE")}
            self.llm_engine = LLMEngine(self)
            self.asleep = set()
            log(("init", kwargs))

        def sleep(self, *args, **kwargs):
            check_call(api, "LLM.sleep", args, kwargs)
            self.asleep = {"weights", "kv_cache"}
            log(("sleep", kwargs.get("level", args[0] if args else 1)))

        def wake_up(self, *args, **kwargs):
            check_call(api, "LLM.wake_up", args, kwargs)
            tags = kwargs.get("tags", args[0] if args else None)
            if tags is not None and not set(tags) <= set(api["wake_up_tags"]):
                raise ValueError(f"unknown wake_up tags {tags}")
            self.asleep -= set(tags or api["wake_up_tags"])
            log(("wake_up", tuple(tags or ())))

        def apply_model(self, *args, **kwargs):
            check_call(api, "LLM.apply_model", args, kwargs)
            if "weights" in self.asleep:
                raise RuntimeError("weights loaded while asleep")
            log(("apply_model", None))
            return [(args[0] if args else kwargs["func"])(FakeModel())]

        def reset_prefix_cache(self, *args, **kwargs):
            check_call(api, "LLM.reset_prefix_cache", args, kwargs)
            log(("reset_prefix_cache", None))
            return True

    mod.LLM, mod.SamplingParams, mod.TokensPrompt = LLM, SamplingParams, TokensPrompt
    sampling = types.ModuleType("vllm.sampling_params")
    sampling.RequestOutputKind, sampling.SamplingParams = kinds, SamplingParams
    mod.sampling_params = sampling
    return mod


def install(monkeypatch, mod: types.ModuleType) -> None:
    """Make ``import vllm`` (and ``importlib.util.find_spec('vllm')``) see ``mod``."""
    import importlib.machinery

    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    mod.sampling_params.__spec__ = importlib.machinery.ModuleSpec("vllm.sampling_params", None)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", mod.sampling_params)


def tokens_for(patch: int, merge: int = 2) -> Callable[[Any], int]:
    """Qwen-VL's count for an image already at a multiple of ``patch * merge`` pixels."""
    return lambda image: math.prod(s // patch for s in image.size) // merge ** 2
