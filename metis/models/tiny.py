"""A tiny, randomly initialised Qwen3-VL with a locally trained tokenizer and processor.

Nothing is downloaded: the tokenizer is a byte-level BPE trained in about a second on a small
built-in corpus (Qwen's pre-tokenizer regex, Qwen's special tokens, the Metis tags as normal
tokens so they survive ``skip_special_tokens``), the processor pairs it with the PIL image
processor, and the model is built from a ``Qwen3VLConfig``. The result is cached on disk under a
key derived from the config, so a second run reuses it bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2Tokenizer, Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from metis.models.chat_template import CHAT_TEMPLATE
from metis.models.processor import MetisQwen3VLProcessor

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]
METIS_TAGS = ["<reason>", "</reason>", "<tool_call>", "</tool_call>", "<answer>", "</answer>"]

TINY_DEFAULTS: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vision_hidden_size": 32,
    "vision_depth": 2,
    "vision_heads": 2,
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 32 * 32 * 4,
    "max_pixels": 256 * 256,
    "seed": 0,
}

_WORDS = (
    "the a an of to in is what which how many much number value answer image shows color red green blue "
    "yellow black white square circle triangle shape text label small large left right top bottom center "
    "count sum product difference total compute calculate crop zoom read write print question python code "
    "search result find tool use need needs not when only if then because so therefore first second final "
    "digit letter word marker corner region pixel size width height area there are picture option choose"
).split()
_CODE = [
    "print({a} * {b})", "x = {a} + {b}\nprint(x)", "img = image_1.crop(({a}, {b}, {c}, {d}))\ndisplay(img)",
    "import numpy as np\nprint(np.array(image_1).shape)", "w, h = image_1.size\nprint(w, h)",
    "big = image_1.resize((image_1.width * 2, image_1.height * 2))\nbig.show()",
]


def tokenizer_corpus(n: int = 4000, seed: int = 0) -> list[str]:
    """Text resembling Metis conversations: questions, tags, tool-call JSON, code, numbers."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        nums = {k: rng.randint(0, 9999) for k in "abcd"}
        code = rng.choice(_CODE).format(**nums)
        call = json.dumps({"name": rng.choice(["python", "text_search", "image_search"]),
                           "arguments": {"code": code}})
        lines.append(
            f"{words.capitalize()}? <reason>{words} {nums['a']}</reason><tool_call>{call}</tool_call>"
            f" Code execution result:\n{nums['b']}\n<answer>{nums['c']}</answer> {nums['a']}.{nums['d']}"
        )
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines


def train_tokenizer(vocab_size: int = 2048, seed: int = 0) -> Qwen2Tokenizer:
    """Train a byte-level BPE with Qwen's pre-tokenizer and wrap it as a ``Qwen2Tokenizer``."""
    n_added = len(SPECIAL_TOKENS) + len(METIS_TAGS)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added + 1, show_progress=False, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tokenizer_corpus(seed=seed), trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    tok = Qwen2Tokenizer(vocab=state["vocab"], merges=merges)
    tok.add_tokens([AddedToken(t, special=True) for t in SPECIAL_TOKENS[1:]], special_tokens=True)
    tok.add_tokens(METIS_TAGS)
    tok.chat_template = CHAT_TEMPLATE
    if len(tok) > vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, more than vocab_size={vocab_size}")
    return tok


def tiny_config(tok: Qwen2Tokenizer, spec: dict[str, Any]) -> Qwen3VLConfig:
    """A Qwen3-VL config whose sizes, rope sections and token ids are consistent (docs/cpu_stack.md)."""
    heads = spec["num_attention_heads"]
    head_dim = spec["hidden_size"] // heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]  # sums to head_dim / 2
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return Qwen3VLConfig(
        text_config={
            "vocab_size": spec["vocab_size"], "hidden_size": spec["hidden_size"],
            "intermediate_size": spec["intermediate_size"], "num_hidden_layers": spec["num_hidden_layers"],
            "num_attention_heads": heads, "num_key_value_heads": spec["num_key_value_heads"],
            "head_dim": head_dim, "max_position_embeddings": 8192, "pad_token_id": ids["<|endoftext|>"],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": mrope, "mrope_interleaved": True},
        },
        vision_config={
            "depth": spec["vision_depth"], "hidden_size": spec["vision_hidden_size"],
            "intermediate_size": 2 * spec["vision_hidden_size"], "num_heads": spec["vision_heads"],
            "out_hidden_size": spec["hidden_size"], "patch_size": spec["patch_size"],
            "spatial_merge_size": spec["merge_size"], "temporal_patch_size": spec["temporal_patch_size"],
            "num_position_embeddings": 256, "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def tiny_processor(tok: Qwen2Tokenizer, spec: dict[str, Any]) -> MetisQwen3VLProcessor:
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=spec["patch_size"], merge_size=spec["merge_size"],
        temporal_patch_size=spec["temporal_patch_size"],
        size={"shortest_edge": spec["min_pixels"], "longest_edge": spec["max_pixels"]},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    return MetisQwen3VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE)


def tiny_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def build_tiny(cache_dir: str | Path, **overrides: Any) -> Path:
    """Build (or find in the cache) the tiny model + processor; return its directory."""
    unknown = set(overrides) - set(TINY_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown tiny model keys: {sorted(unknown)}; known: {sorted(TINY_DEFAULTS)}")
    spec = {**TINY_DEFAULTS, **overrides}
    path = Path(cache_dir).expanduser() / f"tiny-qwen3vl-{tiny_key(spec)}"
    if (path / "config.json").exists() and (path / "tokenizer_config.json").exists():
        return path
    tok = train_tokenizer(spec["vocab_size"], spec["seed"])
    processor = tiny_processor(tok, spec)
    with torch.random.fork_rng(devices=[]):  # building (cache miss) must not move the caller's RNG
        torch.manual_seed(spec["seed"])
        model = Qwen3VLForConditionalGeneration(tiny_config(tok, spec))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "metis_tiny_spec.json").write_text(json.dumps(spec, indent=1))
    try:
        tmp.rename(path)  # atomic: a crashed build never leaves a half-written cache entry
    except OSError:  # another process built the same entry first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "config.json").exists():
            raise
    return path
