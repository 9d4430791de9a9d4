"""Small helpers for metric dictionaries."""

from __future__ import annotations

from typing import Any, Mapping, Sequence


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


def window_mean(rows: Sequence[Mapping[str, float]], keys: Sequence[str] | None = None) -> dict[str, float]:
    """Per key, the mean over the rows that logged it (``keys``: only these); keys no row has are left out."""
    wanted = keys if keys is not None else sorted({k for r in rows for k in r})
    out = {}
    for k in wanted:
        values = [float(r[k]) for r in rows if k in r]
        if values:
            out[k] = sum(values) / len(values)
    return out
