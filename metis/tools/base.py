"""The tool contract (docs/interfaces.md): ``Observation`` and ``Tool`` (configs name a tool class by ``_target_``).

Tools know nothing of models or tokenizers: text and images in, an ``Observation`` out. The text
holds the literal ``<image>`` once per returned image, in order; tools escape that placeholder in
any text they did not produce themselves (model output, search snippets) with ``escape_text``.

Deliberate simplification: argument validation (``validate_arguments``) covers the JSON-schema
subset the tools use (object, required keys, string/integer/number/boolean/object/array types),
not full JSON schema.
"""

from __future__ import annotations

import base64
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from PIL import Image

from metis.core.images import IMAGE_PLACEHOLDER, fit_image, smart_resize

ERROR_KINDS = ("parse_error", "unknown_tool", "execution_error", "timeout", "refused", "limit")

__all__ = ["ERROR_KINDS", "IMAGE_PLACEHOLDER", "Observation", "Tool", "cache_root",
           "encode_png", "error_observation", "escape_text", "fit_image", "smart_resize",
           "validate_arguments"]


@dataclass
class Observation:
    """What a tool call returns to the model."""

    text: str  # contains the literal "<image>" once per returned image, in order
    images: list[Image.Image] = field(default_factory=list)
    error: str | None = None  # None on success, else one of ERROR_KINDS
    latency_s: float = 0.0


class Tool(ABC):
    """One tool. ``call`` never raises for bad input; per-trajectory state is keyed by traj_id."""

    name: ClassVar[str]
    description: ClassVar[str]  # one line for the system prompt
    parameters: ClassVar[dict]  # JSON schema of the arguments

    def start(self, traj_id: str, images: list[Image.Image],  # noqa: B027 - optional hook
              meta: Mapping[str, Any] | None = None) -> None:
        """A trajectory begins with these input images (``meta``: optional task fields)."""

    @abstractmethod
    def call(self, traj_id: str, arguments: dict) -> Observation:
        """Run the tool once for this trajectory."""

    def end(self, traj_id: str) -> None:  # noqa: B027 - optional hook
        """The trajectory is over: free its state."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release every resource (processes, connections)."""

    @classmethod
    def spec(cls) -> dict:
        """The tool as the system prompt lists it (a class method: no instance, no back-end needed)."""
        return {"name": cls.name, "description": cls.description,
                "parameters": cls.parameters}


def escape_text(text: str) -> str:
    """Neutralise image placeholders inside untrusted text (model stdout, search snippets)."""
    return text.replace(IMAGE_PLACEHOLDER, "[image]")


def error_observation(kind: str, message: str, latency_s: float = 0.0) -> Observation:
    assert kind in ERROR_KINDS, kind
    return Observation(text=escape_text(message), images=[], error=kind, latency_s=latency_s)


def encode_png(img: Image.Image) -> str:
    """Base64 PNG (for HTTP search APIs)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (dict,), "array": (list,),
}


def validate_arguments(arguments: Any, schema: Mapping[str, Any]) -> str | None:
    """None when ``arguments`` fit ``schema`` (the subset above), else a short reason."""
    if not isinstance(arguments, dict):
        return f"arguments must be a JSON object, got {type(arguments).__name__}"
    props = schema.get("properties", {}) or {}
    missing = [k for k in schema.get("required", []) if k not in arguments]
    if missing:
        return "missing required argument(s): " + ", ".join(missing)
    for key, value in arguments.items():
        spec = props.get(key)
        if not isinstance(key, str) or spec is None:
            continue  # unknown keys are ignored
        want = _JSON_TYPES.get(spec.get("type", ""), ())
        bad_bool = isinstance(value, bool) and spec.get("type") in ("integer", "number")
        if want and (not isinstance(value, want) or bad_bool):
            return f"argument {key!r} must be of type {spec['type']}, got {type(value).__name__}"
    return None


def cache_root() -> str:
    """Where tools cache built indexes and generated corpora ($METIS_CACHE or ~/.cache/metis)."""
    root = os.environ.get("METIS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "metis")
    os.makedirs(root, exist_ok=True)
    return root
