"""Small helpers for metric dictionaries."""

from __future__ import annotations

from typing import Any, Mapping


def flatten_numeric(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"python": {"calls": 3, "errors": {"timeout": 1}}}`` -> ``{"python/calls": 3.0, "python/errors/timeout": 1.0}``.

    Non-numeric leaves (strings, None) are dropped.
    """
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_numeric(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
        elif isinstance(value, bool):
            out[name] = float(value)
    return out
