"""Typed parameters read from a signature (metis.rl.params): what registering a scheme checks."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest

from metis.rl.params import NonNegative, Positive, Range, TypedFunction
from metis.utils.registry import Registry


def test_types_bounds_choices_and_optional():
    def fn(x, *, w: NonNegative = 1.0, eps: Positive = 1e-6, k: int = 2, on: bool = True,
           mode: Literal["a", "b"] = "a", cap: Annotated[float, Range(le=1)] | None = None,
           label: str = "run") -> dict:
        return {"w": w, "eps": eps, "k": k, "on": on, "mode": mode, "cap": cap, "label": label}

    typed = TypedFunction(fn, "scheme 'demo'")
    assert typed.defaults == {"w": 1.0, "eps": 1e-6, "k": 2, "on": True, "mode": "a", "cap": None, "label": "run"}
    out = typed(None, w=2, cap=0.5)
    assert out["w"] == 2.0 and isinstance(out["w"], float) and out["cap"] == 0.5
    for bad, msg in [({"w": -1}, "'w' must be >= 0"), ({"eps": 0.0}, "'eps' must be > 0"),
                     ({"k": 2.5}, "'k' must be an integer"), ({"k": True}, "'k' must be an integer"),
                     ({"on": 1}, "'on' must be a bool"), ({"mode": "c"}, "'mode' must be one of"),
                     ({"cap": 2.0}, "'cap' must be <= 1"), ({"label": 3}, "'label' must be a string"),
                     ({"w": float("inf")}, "finite"), ({"nope": 1}, "unknown parameter 'nope' for scheme 'demo'")]:
        with pytest.raises(ValueError, match=msg):
            typed.check(bad)


def test_untyped_parameters_are_refused_when_registered():
    reg: Registry = Registry("thing", prepare=lambda name, fn: TypedFunction(fn, f"thing {name!r}"))

    with pytest.raises(TypeError, match="'w' needs a type annotation and a default"):
        @reg.register("no_default")
        def no_default(x, *, w: float) -> None: ...

    with pytest.raises(TypeError, match="must be annotated"):
        @reg.register("list_param")
        def list_param(x, *, w: list = []) -> None: ...  # noqa: B006

    with pytest.raises(ValueError, match="'w' must be >= 0"):  # a default that breaks its own bound
        @reg.register("bad_default")
        def bad_default(x, *, w: NonNegative = -1.0) -> None: ...

    @reg.register("ok")
    def ok(x, *, w: NonNegative = 0.5) -> float:
        return w

    assert ok(None, w=-3) == -3  # the decorator returns the plain function; the registry holds the checked one
    with pytest.raises(ValueError, match="'w' must be >= 0"):
        reg.get("ok")(None, w=-3)
