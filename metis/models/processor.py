"""An image-only Qwen3-VL processor.

``Qwen3VLProcessor`` insists on a video processor, and the video processor needs torchvision,
which does not install beside the CPU torch this project uses (docs/cpu_stack.md). Metis feeds
images only, so this subclass drops the video processor and pairs the tokenizer with the
PIL image processor. Everything else (placeholder expansion, ``mm_token_type_ids``) is the
upstream code. Importing this module registers the class with ``AutoProcessor``.
"""

from __future__ import annotations

from transformers import AutoProcessor, Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin


class MetisQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor with images and text only (no video, no torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        # Qwen3VLProcessor.__init__ passes a video processor positionally; go one level up.
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.vision_start_token = "<|vision_start|>"
        self.vision_end_token = "<|vision_end|>"
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)

    @classmethod
    def get_attributes(cls) -> list[str]:
        return ["image_processor", "tokenizer"]


AutoProcessor.register(Qwen3VLConfig, MetisQwen3VLProcessor, exist_ok=True)

__all__ = ["MetisQwen3VLProcessor", "Qwen2VLImageProcessorPil"]
