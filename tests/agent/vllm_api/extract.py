"""Record the part of vLLM's Python API that ``metis.agent.vllm_engine`` calls, from vLLM's source.

    python tests/agent/vllm_api/extract.py UNPACKED_VLLM_WHEEL_DIR > tests/agent/vllm_api/vllm-X.Y.Z.json

(a wheel is a zip: ``pip download vllm==X.Y.Z --no-deps`` then ``unzip``). The source is parsed
with ``ast``, never imported, so this runs on any machine. The JSON lists, for each callable,
its parameter names (positional, keyword-only, and whether ``*args`` / ``**kwargs`` are taken)
and, for each record type, its field names; :mod:`fake_vllm` builds a ``vllm`` module from it
that rejects any other name, so the engine's calls are checked against that vLLM version.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

METHODS = {  # file -> class -> methods
    "vllm/entrypoints/llm.py": {"LLM": ["__init__", "generate", "sleep", "wake_up", "reset_prefix_cache",
                                        "collective_rpc", "apply_model", "get_tokenizer"]},
    "vllm/v1/engine/llm_engine.py": {"LLMEngine": ["add_request", "step", "has_unfinished_requests",
                                                   "abort_request", "reset_prefix_cache", "sleep", "wake_up",
                                                   "apply_model", "collective_rpc"]},
    "vllm/outputs.py": {"RequestOutput": ["__init__"]},
}
FIELDS = {  # file -> classes whose annotated fields (own and same-file bases) are recorded
    "vllm/sampling_params.py": ["SamplingParams"],
    "vllm/engine/arg_utils.py": ["EngineArgs"],
    "vllm/outputs.py": ["CompletionOutput"],
    "vllm/logprobs.py": ["Logprob"],
}
PROMPT_FILES = ["vllm/inputs/llm.py", "vllm/inputs/data.py"]  # TokensPrompt moved between releases


def signature(fn: ast.FunctionDef) -> dict:
    a = fn.args
    positional = [x.arg for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")]
    return {"positional": positional, "kwonly": [x.arg for x in a.kwonlyargs],
            "varargs": a.vararg is not None, "varkw": a.kwarg is not None}


def classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}


def fields(cls: ast.ClassDef, by_name: dict[str, ast.ClassDef]) -> list[str]:
    out: list[str] = []
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in by_name:
            out += fields(by_name[base.id], by_name)
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                not node.target.id.startswith("_") and "ClassVar" not in ast.unparse(node.annotation):
            out.append(node.target.id)
    return list(dict.fromkeys(out))


def extract(root: Path) -> dict:
    version = re.search(r"__version__\s*(?::\s*str)?\s*=\s*version\s*=\s*['\"]([^'\"]+)",
                        (root / "vllm/_version.py").read_text())
    out: dict = {"version": version.group(1) if version else "unknown", "signatures": {}, "fields": {}}
    for path, wanted in METHODS.items():
        tree = ast.parse((root / path).read_text())
        for cname, methods in wanted.items():
            body = {n.name: n for n in classes(tree)[cname].body if isinstance(n, ast.FunctionDef)}
            for m in methods:
                if m in body:
                    out["signatures"][f"{cname}.{m}"] = signature(body[m])
    for path, names in FIELDS.items():
        by_name = classes(ast.parse((root / path).read_text()))
        for name in names:
            out["fields"][name] = fields(by_name[name], by_name)
    for path in PROMPT_FILES:
        if (root / path).exists():
            by_name = classes(ast.parse((root / path).read_text()))
            if "TokensPrompt" in by_name:
                out["fields"]["TokensPrompt"] = fields(by_name["TokensPrompt"], by_name)
                break
    kinds = classes(ast.parse((root / "vllm/sampling_params.py").read_text()))["RequestOutputKind"]
    out["fields"]["RequestOutputKind"] = [t.id for n in kinds.body if isinstance(n, ast.Assign) for t in n.targets]
    env = (root / "vllm/envs.py").read_text()
    out["env"] = sorted(set(re.findall(r'^\s*"(VLLM_[A-Z0-9_]+)":', env, flags=re.M)))
    llm = (root / "vllm/v1/engine/llm_engine.py").read_text()
    out["llm_engine_attributes"] = sorted(set(re.findall(r"self\.(model_executor|engine_core)\s*=", llm)))
    # the wake_up tags the engine core accepts (the docstring's list in LLM.wake_up)
    doc = ast.get_docstring(next(n for n in classes(ast.parse((root / "vllm/entrypoints/llm.py").read_text()))
                                 ["LLM"].body if isinstance(n, ast.FunctionDef) and n.name == "wake_up")) or ""
    out["wake_up_tags"] = sorted(set(re.findall(r'"(weights|kv_cache|scheduling)"', doc)))
    return out


if __name__ == "__main__":
    print(json.dumps(extract(Path(sys.argv[1])), indent=1, sort_keys=True))
