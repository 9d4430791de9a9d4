"""Is a re-executed observation the recorded one? Text after normalisation, images by perceptual hash.

Text: memory addresses (``0x7f...``) are masked, every number is rewritten canonically (``6.0`` and
``6`` and ``6.00`` are the same; floats keep ``sig_digits`` significant digits, so
``0.30000000000000004`` equals ``0.3``), whitespace runs become one space.

Sections: a recorded observation written with ``stdout:`` / ``stderr:`` section lines (as some
public code-result layouts are) is compared section by section: with the actual observation's
sections when it has them, else with the Python tool's layout (stdout then stderr after the
``Code execution result:`` header); the mismatch names the section.

Images: same count, and each pair's perceptual-hash Hamming distance (``imagehash``; 64 bits by
default) is at most ``max_distance``, so resizing and re-encoding do not count as a difference but
another picture does.

Deliberate simplifications: numbers are matched by a regular expression (digits inside
identifiers such as ``image_1`` are left alone); no tolerance on the order of printed lines; images
are compared pairwise in order, with no alignment if one was dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w])")
_SPACE = re.compile(r"\s+")


def _canon_number(token: str, sig_digits: int) -> str:
    try:
        value = float(token)
    except ValueError:
        return token
    if value != value or value in (float("inf"), float("-inf")):
        return token
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{sig_digits}g}"


def normalize_text(text: str, sig_digits: int = 6) -> str:
    """The comparison form of an observation text (see the module docstring)."""
    text = _ADDRESS.sub("0x?", text or "")
    text = _NUMBER.sub(lambda m: _canon_number(m.group(0), sig_digits), text)
    return _SPACE.sub(" ", text).strip()


def texts_match(recorded: str, actual: str, sig_digits: int = 6) -> bool:
    return normalize_text(recorded, sig_digits) == normalize_text(actual, sig_digits)


def image_distance(a: Image.Image, b: Image.Image, method: str = "phash", hash_size: int = 8) -> int:
    """Hamming distance between the perceptual hashes of two images."""
    import imagehash

    fn = {"phash": imagehash.phash, "dhash": imagehash.dhash, "ahash": imagehash.average_hash,
          "whash": imagehash.whash}.get(method)
    if fn is None:
        raise ValueError(f"unknown image hash {method!r}; use phash, dhash, ahash or whash")
    return int(fn(a.convert("RGB"), hash_size=hash_size) - fn(b.convert("RGB"), hash_size=hash_size))


_HEADER = "Code execution result:"
_SECTION_RE = re.compile(r"^[ \t]*(stdout|stderr)[ \t]*:[ \t]*$\n?", re.M | re.I)
_FENCE_LINE = re.compile(r"^[ \t]*```[a-z]*[ \t]*$", re.M)


def _body(text: str) -> str:
    """An observation without its ``Code execution result:`` header and ``Images:`` trailer."""
    text = text.strip()
    if text.startswith(_HEADER):
        text = text[len(_HEADER):]
    cut = text.rfind("\nImages:")
    return text[:cut] if cut >= 0 else text


def sections(text: str) -> dict[str, str] | None:
    """``{"stdout", "stderr"}`` of an observation written with ``stdout:`` / ``stderr:`` section lines
    (fence lines dropped), or ``None`` when it has no such sections."""
    body = _body(text)
    marks = list(_SECTION_RE.finditer(body))
    if not marks:
        return None
    out = {"stdout": "", "stderr": ""}
    for k, m in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(body)
        out[m.group(1).lower()] += _FENCE_LINE.sub("", body[m.end():end])
    return out


def _section_mismatch(recorded: dict[str, str], actual_text: str, sig_digits: int) -> dict[str, Any] | None:
    """Compare a sectioned recorded observation with the actual one: per section when the actual one
    has sections too, else against our tool's layout (stdout, then stderr, in one block)."""
    actual = sections(actual_text)
    if actual is not None:
        for name in ("stdout", "stderr"):
            if not texts_match(recorded[name], actual[name], sig_digits):
                return {"section": name, "recorded": normalize_text(recorded[name], sig_digits)[:300],
                        "actual": normalize_text(actual[name], sig_digits)[:300]}
        return None
    body = normalize_text(_body(actual_text), sig_digits)
    out, err = normalize_text(recorded["stdout"], sig_digits), normalize_text(recorded["stderr"], sig_digits)
    if body == " ".join(t for t in (out, err) if t):
        return None
    section = "stderr" if body.startswith(out) else "stdout"
    return {"section": section, "recorded": (out if section == "stdout" else err)[:300],
            "actual": (body if section == "stdout" else body[len(out):].strip())[:300]}


@dataclass
class Mismatch:
    kind: str  # text / image_count / image
    detail: dict[str, Any]


def compare_observation(recorded_text: str, recorded_images: Sequence[Image.Image], actual_text: str,
                        actual_images: Sequence[Image.Image], sig_digits: int = 6, hash_method: str = "phash",
                        hash_size: int = 8, max_distance: int = 10) -> Mismatch | None:
    """None when the observations agree, else the first difference found."""
    recorded_sections = sections(recorded_text)
    if recorded_sections is not None:
        diff = _section_mismatch(recorded_sections, actual_text, sig_digits)
        if diff is not None:
            return Mismatch("text", diff)
    elif not texts_match(recorded_text, actual_text, sig_digits):
        return Mismatch("text", {"recorded": normalize_text(recorded_text, sig_digits)[:300],
                                 "actual": normalize_text(actual_text, sig_digits)[:300]})
    if len(recorded_images) != len(actual_images):
        return Mismatch("image_count", {"recorded": len(recorded_images), "actual": len(actual_images)})
    for k, (a, b) in enumerate(zip(recorded_images, actual_images)):
        d = image_distance(a, b, hash_method, hash_size)
        if d > max_distance:
            return Mismatch("image", {"image": k, "distance": d, "max_distance": max_distance})
    return None
