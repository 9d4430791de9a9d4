"""One function that returns ``(model, processor)`` from a model config."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

from metis.models.chat_template import CHAT_TEMPLATE
from metis.models.processor import MetisQwen3VLProcessor
from metis.models.tiny import build_tiny

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(os.environ.get("METIS_CACHE", "~/.cache/metis")).expanduser()


def pick_attention(requested: str = "auto", device: str | None = None) -> str:
    """``flash_attention_2`` when it is installed and a CUDA device is used, else ``sdpa``."""
    if requested != "auto":
        if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ImportError("attn_implementation=flash_attention_2 needs flash-attn: pip install -e '.[gpu]'")
        return requested
    on_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"


def pick_dtype(requested: str = "auto") -> torch.dtype:
    """bf16 on GPUs, fp32 on CPU unless asked otherwise."""
    if requested == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return getattr(torch, requested)


def load_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """Load a Qwen3-VL processor; without torchvision fall back to the image-only processor.

    ``min_pixels`` / ``max_pixels`` bound the pixels of every image; one given alone keeps the
    processor's own value for the other."""
    if (min_pixels is None) != (max_pixels is None):
        own = load_processor(path).image_processor.size
        min_pixels = own["shortest_edge"] if min_pixels is None else min_pixels
        max_pixels = own["longest_edge"] if max_pixels is None else max_pixels
    size_kwargs: dict[str, Any] = {}
    if min_pixels is not None and max_pixels is not None:
        if not 0 < min_pixels <= max_pixels:
            raise ValueError(f"model.min_pixels ({min_pixels}) must be positive and <= model.max_pixels ({max_pixels})")
        size_kwargs["size"] = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    try:
        processor = AutoProcessor.from_pretrained(str(path), **size_kwargs)
    except (ImportError, ValueError, TypeError, OSError) as err:
        log.info("AutoProcessor failed (%s); using the image-only Metis processor", err)
        processor = None
    if processor is None or not hasattr(processor, "image_processor"):
        # some transformers versions hand back a bare tokenizer for a processor they cannot build
        processor = MetisQwen3VLProcessor.from_pretrained(str(path), **size_kwargs)
    if not hasattr(processor, "image_processor"):
        raise TypeError(f"{path} gave a {type(processor).__name__}, not a Qwen3-VL processor")
    # Metis needs {% generation %} blocks and tool turns rendered as user turns.
    processor.chat_template = CHAT_TEMPLATE
    processor.tokenizer.chat_template = CHAT_TEMPLATE
    tags = ["<reason>", "</reason>", "<tool_call>", "</tool_call>", "<answer>", "</answer>"]
    missing = [t for t in tags if t not in processor.tokenizer.get_vocab()]
    if missing:  # real Qwen vocabularies hold <tool_call> but not <reason>/<answer>: plain text is fine
        log.info("tags tokenised as plain text: %s", missing)
    return processor


def build_policy(
    name_or_path: str | None = None,
    tiny: dict[str, Any] | None = None,
    init_from: str | None = None,
    dtype: str = "auto",
    attn_implementation: str = "auto",
    cache_dir: str | None = None,
    gradient_checkpointing: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    device: str | None = None,
    lora: dict[str, Any] | None = None,
    quantization: str | None = None,
    freeze_vision: bool = False,
):
    """Return ``(model, processor)``.

    Args:
        name_or_path: a hub id (``Qwen/Qwen3-VL-8B-Instruct``) or a local directory. ``None`` with
            ``tiny`` builds (or reuses from ``cache_dir``) a random tiny Qwen3-VL.
        tiny: overrides of :data:`metis.models.tiny.TINY_DEFAULTS`.
        init_from: a directory saved by Metis (SFT output, merged HF dir) whose weights replace
            the base weights; the processor still comes from the base.
        lora: PEFT LoRA on the language model (``{r, alpha, dropout, target_modules}``); the base
            with the adapter disabled is then the reference policy (no second copy of the weights).
        quantization: ``"4bit"`` (QLoRA, NF4) or ``"8bit"`` base weights through bitsandbytes
            (GPU only; needs ``lora``).
        freeze_vision: keep the vision tower's weights fixed.
    """
    if name_or_path is None:
        if tiny is None:
            raise ValueError("model: set name_or_path (hub id or local dir) or tiny (a tiny config)")
        name_or_path = str(build_tiny(cache_dir or DEFAULT_CACHE / "tiny", **dict(tiny)))
    attn = pick_attention(attn_implementation, device)
    torch_dtype = pick_dtype(dtype)
    weights = init_from or name_or_path
    extra: dict[str, Any] = {}
    if quantization is not None:
        extra["quantization_config"] = quantization_config(quantization, torch_dtype, lora)
    model = Qwen3VLForConditionalGeneration.from_pretrained(weights, dtype=torch_dtype, attn_implementation=attn,
                                                            **extra)
    model.train()  # from_pretrained returns eval mode and Lightning leaves it so
    if freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if lora:
        model = apply_lora(model, **dict(lora))
    processor = load_processor(name_or_path, min_pixels, max_pixels)
    log.info("policy %s: %.1fM parameters, %s, attention=%s", weights,
             sum(p.numel() for p in model.parameters()) / 1e6, torch_dtype, attn)
    return model, processor


def quantization_config(kind: str, compute_dtype: torch.dtype, lora: dict | None):
    """bitsandbytes 4-bit (NF4, double quant) or 8-bit base weights; only with LoRA, only on CUDA."""
    if kind not in ("4bit", "8bit"):
        raise ValueError(f"model.quantization must be 4bit, 8bit or null, got {kind!r}")
    if not lora:
        raise ValueError("model.quantization needs model.lora: quantized base weights cannot be trained directly")
    if not torch.cuda.is_available():
        raise RuntimeError("model.quantization (bitsandbytes) needs a CUDA GPU; drop it on CPU")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("model.quantization needs bitsandbytes: pip install -e '.[quant]'")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


# attention and MLP projections of the text decoder only (module names start with model.language_model)
LANGUAGE_MODEL_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def apply_lora(model, r: int = 16, alpha: int | None = None, dropout: float = 0.05,
               target_modules: list[str] | str = "language-model-linear"):
    """Wrap ``model`` with a PEFT LoRA adapter on the language model's projections.

    The one LoRA entry point (``model.lora`` for RL, ``module.lora`` for SFT), keys
    ``{r, alpha, dropout, target_modules}``; ``alpha`` defaults to ``2 * r``.
    """
    from peft import LoraConfig, get_peft_model

    if target_modules == "language-model-linear":
        target_modules = LANGUAGE_MODEL_LINEAR
    alpha = 2 * r if alpha is None else alpha
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    return peft_model
