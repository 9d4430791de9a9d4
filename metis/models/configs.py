"""Architecture configs of real Qwen3-VL sizes, for building random-weight models (no download).

Used by the GPU check and benchmarks to measure the 8B path without its weights. Dimensions of
Qwen3-VL-8B-Instruct's published config; token ids come from whatever tokenizer is used.
"""

from __future__ import annotations

from transformers import Qwen3VLConfig

QWEN3_VL_8B = {
    "text": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
             "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
             "max_position_embeddings": 262144,
             "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True}},
    "vision": {"depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
               "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
               "num_position_embeddings": 2304, "deepstack_visual_indexes": [8, 16, 24]},
}


def qwen3_vl_config(tokenizer, size: dict = QWEN3_VL_8B, num_hidden_layers: int | None = None,
                    vision_depth: int | None = None, vocab_size: int | None = None) -> Qwen3VLConfig:
    """A Qwen3-VL config of ``size`` whose special token ids are ``tokenizer``'s."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|endoftext|>")}
    text = dict(size["text"], pad_token_id=ids["<|endoftext|>"])
    if num_hidden_layers is not None:
        text["num_hidden_layers"] = num_hidden_layers
    if vocab_size is not None:
        text["vocab_size"] = vocab_size
    vision = dict(size["vision"])
    if vision_depth is not None:  # shallower vision tower (script checks on small machines)
        vision["depth"] = vision_depth
        vision["deepstack_visual_indexes"] = [i for i in vision["deepstack_visual_indexes"] if i < vision_depth] or [0]
    return Qwen3VLConfig(text_config=text, vision_config=vision,
                         image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                         vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
                         tie_word_embeddings=False)
