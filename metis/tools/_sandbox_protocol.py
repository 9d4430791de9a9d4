"""Framing shared by the sandboxed worker and the parent (standard library only; PIL is imported
lazily), so that ``_python_worker.py`` can import it inside the sandbox, where ``metis`` is not
visible.

Protocol (both directions, on the pipes that were the process's stdin/stdout at start; they are
moved to private fds, fd 0 becomes /dev/null and fds 1/2 an anonymous file whose content is
reported as output): a frame is ``>II`` (JSON length, number of blobs), the UTF-8 JSON, then per
blob ``>Q`` length + raw bytes. Images travel as ``{"mode": "RGB", "size": [w, h], "blob": i}``
with the raw pixels in blob ``i``: raw RGB rather than base64 PNG because, measured here, PNG
coding of a 1024x1024 photo costs 0.15-0.3 s of CPU and base64 + JSON another ~70 ms, all
under the parent's GIL, while raw blobs cost a few ms. The parent checks sizes before use.

Parent -> worker: ``{"op": "init", "images": [image, ...]}`` | ``{"op": "exec", "code": str}``
| ``{"op": "ping"}``. Worker -> parent: ``{"op": "ready", "pid": int}`` once, then one reply per
request: ``{"ok": bool, "stdout": str, "stderr": str, "error": str | None, "images": [image],
"dropped_images": int}``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

HEADER = struct.Struct(">II")  # JSON length, number of blobs
BLOB = struct.Struct(">Q")


def smart_resize(height: int, width: int, factor: int = 32, min_pixels: int = 4096,
                 max_pixels: int = 5120 * 32 * 32) -> tuple[int, int]:
    """Qwen-VL style resize target: sides multiples of ``factor``, pixel count in [min, max].

    Extreme aspect ratios are clamped to 200:1 instead of raising.
    """
    height, width = max(1, int(height)), max(1, int(width))
    if max(height, width) / min(height, width) > 200:
        if height > width:
            height = width * 200
        else:
            width = height * 200
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def encode_image(img: Any, blobs: list[bytes]) -> dict:
    """A PIL image as a protocol image dict; its pixels are appended to ``blobs``."""
    img = img.convert("RGB")
    blobs.append(img.tobytes())
    return {"mode": "RGB", "size": [img.width, img.height], "blob": len(blobs) - 1}


def decode_image(obj: Any, blobs: list[bytes], max_pixels: int | None = None) -> Any:
    """The inverse of ``encode_image``; ValueError on anything malformed or too large."""
    from PIL import Image

    if not isinstance(obj, dict) or obj.get("mode") != "RGB":
        raise ValueError("not an RGB image message")
    w, h = (int(v) for v in obj["size"])
    if w <= 0 or h <= 0 or (max_pixels is not None and w * h > max_pixels):
        raise ValueError(f"bad image size {w}x{h}")
    idx = int(obj["blob"])
    if not 0 <= idx < len(blobs) or len(blobs[idx]) != w * h * 3:
        raise ValueError("image data is missing or has the wrong length")
    return Image.frombytes("RGB", (w, h), blobs[idx])


def encode_frames(obj: Any, blobs: list[bytes] | tuple = ()) -> list[bytes]:
    """One message as a list of byte strings to write in order (blobs are not copied)."""
    body = json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace")
    frames = [HEADER.pack(len(body), len(blobs)), body]
    for blob in blobs:
        frames += [BLOB.pack(len(blob)), blob]
    return frames


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            return None
        got += k
    return bytes(buf)


def read_message(fd: int) -> tuple[dict, list[bytes]] | None:
    header = _read_exact(fd, HEADER.size)
    if header is None:
        return None
    size, n_blobs = HEADER.unpack(header)
    body = _read_exact(fd, size)
    if body is None:
        return None
    blobs = []
    for _ in range(n_blobs):
        head = _read_exact(fd, BLOB.size)
        blob = None if head is None else _read_exact(fd, BLOB.unpack(head)[0])
        if blob is None:
            return None
        blobs.append(blob)
    return json.loads(body), blobs


def write_message(fd: int, obj: Any, blobs: list[bytes] | tuple = ()) -> None:
    for frame in encode_frames(obj, blobs):
        data = memoryview(frame)
        while data:
            data = data[os.write(fd, data):]
