"""The prompt a rollout starts from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Task:
    """One prompt: a question with its images and a checkable answer.

    ``question`` holds the literal ``<image>`` once per image, where the image goes; a question
    without placeholders gets its images in front of the text.
    """

    id: str
    question: str
    images: list[Image.Image]
    answer: str | list[str]
    verifier: str = "exact"
    data_source: str = "synthetic"
    category: str = "perception"  # perception / search / math
    needs_tool: bool | None = None  # ground-truth tool necessity where known
    meta: dict[str, Any] = field(default_factory=dict)

    def content(self) -> list[dict[str, str]]:
        """The user message content in chat-template form (``image`` and ``text`` parts)."""
        parts = self.question.split("<image>")
        if len(parts) - 1 != len(self.images):
            if len(parts) != 1:
                raise ValueError(f"task {self.id}: {len(parts) - 1} <image> placeholders for {len(self.images)} images")
            return [{"type": "image"} for _ in self.images] + [{"type": "text", "text": self.question}]
        content: list[dict[str, str]] = []
        for i, text in enumerate(parts):
            if text:
                content.append({"type": "text", "text": text})
            if i < len(self.images):
                content.append({"type": "image"})
        return content
