"""The tiny Qwen3-VL, its tokenizer and processor: build, cache, reload, template round trip."""

from __future__ import annotations

import torch
from PIL import Image

from metis.models import build_policy, build_tiny
from metis.models.tiny import METIS_TAGS


def test_build_is_cached_and_reloads_identically(tiny_policy, tiny_cache):
    model, processor = tiny_policy
    path = build_tiny(f"{tiny_cache}/tiny")
    mtime = (path / "config.json").stat().st_mtime
    assert build_tiny(f"{tiny_cache}/tiny") == path and (path / "config.json").stat().st_mtime == mtime
    model2, processor2 = build_policy(tiny={}, cache_dir=f"{tiny_cache}/tiny")
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    text = "<reason>zoom</reason><tool_call>{}</tool_call><answer>7</answer>"
    assert processor.tokenizer(text)["input_ids"] == processor2.tokenizer(text)["input_ids"]
    assert model.training  # from_pretrained returns eval mode; build_policy switches to train


def test_tags_are_single_normal_tokens(tiny_policy):
    tok = tiny_policy[1].tokenizer
    for tag in METIS_TAGS:
        ids = tok(tag, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1
        assert tok.decode(ids, skip_special_tokens=True) == tag  # survives skip_special_tokens
    for special in ["<|im_start|>", "<|im_end|>", "<|image_pad|>"]:
        assert tok.decode(tok(special)["input_ids"], skip_special_tokens=True) == ""


def test_config_ids_match_tokenizer(tiny_policy):
    model, processor = tiny_policy
    tok = processor.tokenizer
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_config.out_hidden_size == cfg.text_config.hidden_size
    head_dim = cfg.text_config.head_dim
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == head_dim // 2


def test_chat_template_round_trips_multiturn_tool_conversation(tiny_policy):
    model, processor = tiny_policy
    images = [Image.new("RGB", (96, 64), "red"), Image.new("RGB", (64, 64), "blue")]
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": '<reason>zoom</reason><tool_call>{"name": "python"}</tool_call>'},
        {"role": "tool", "content": [{"type": "text", "text": "Code execution result:\nImages:\n"}, {"type": "image"}]},
        {"role": "assistant", "content": "<reason>ok</reason><answer>red</answer>"},
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|im_start|>system\nsys<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
        '<|im_start|>assistant\n<reason>zoom</reason><tool_call>{"name": "python"}</tool_call><|im_end|>\n'
        "<|im_start|>user\nCode execution result:\nImages:\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n<reason>ok</reason><answer>red</answer><|im_end|>\n"
    )
    enc = processor(text=[text], images=images, return_tensors="pt")
    assert enc["image_grid_thw"].shape == (2, 3)
    n_pad = int((enc["input_ids"] == processor.image_token_id).sum())
    assert n_pad == int((enc["image_grid_thw"].prod(-1) // 4).sum())
    assert processor.tokenizer.decode(enc["input_ids"][0]).count("<|image_pad|>") == n_pad
    out = model(**enc)
    assert out.logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(out.logits).all()
    # the assistant mask covers exactly the two assistant turns
    masked = processor.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                     return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(masked["input_ids"], masked["assistant_masks"]) if m]
    assert processor.tokenizer.decode(kept) == (
        '<reason>zoom</reason><tool_call>{"name": "python"}</tool_call><|im_end|>'
        "<reason>ok</reason><answer>red</answer><|im_end|>")


def test_one_pixel_bound_alone_is_applied_and_bad_bounds_are_refused(tiny_policy, tiny_cache):
    """model.max_pixels without model.min_pixels must still cap images (it was silently ignored)."""
    import pytest
    from PIL import Image

    from metis.models.loading import load_processor

    path = tiny_policy[0].name_or_path
    proc = load_processor(path, max_pixels=64 * 64)
    grid = proc(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (256, 256))],
                return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 4]]  # 64x64 pixels in 16 px patches, not 256x256
    assert proc.image_processor.size["shortest_edge"] == load_processor(path).image_processor.size["shortest_edge"]
    with pytest.raises(ValueError, match="min_pixels"):
        load_processor(path, min_pixels=8192, max_pixels=4096)
