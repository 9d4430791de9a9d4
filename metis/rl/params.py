"""Typed parameters read from a function's signature, so a registered function validates its own
configuration: no global tables of which key is a bool, a choice or a non-negative number.

A parameter is keyword-only, has a default and an annotation, one of
``bool``, ``int``, ``float``, ``str``, ``Literal[...]`` (a choice), ``X | None``, or any of them
wrapped in ``Annotated[X, Range(...)]`` for bounds::

    @REWARD_SCHEMES.register("mine")
    def mine(scores: RolloutScores, *, weight: NonNegative = 1.0,
             mode: Literal["fast", "slow"] = "fast", debug: bool = False) -> AdvantageResult: ...

Deliberate simplifications: ``int`` accepts only ints (not integral floats); ``float`` accepts
ints and bools are never numbers; containers (lists, dicts) are not supported as parameters.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Mapping


@dataclass(frozen=True)
class Range:
    """Bounds for a numeric parameter (each optional): ge <= x, gt < x, x <= le, x < lt."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        parts = [f">= {self.ge:g}" if self.ge is not None else "", f"> {self.gt:g}" if self.gt is not None else "",
                 f"<= {self.le:g}" if self.le is not None else "", f"< {self.lt:g}" if self.lt is not None else ""]
        return " and ".join(p for p in parts if p)

    def holds(self, x: float) -> bool:
        return ((self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
                and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))


NonNegative = Annotated[float, Range(ge=0)]
Positive = Annotated[float, Range(gt=0)]


@dataclass(frozen=True)
class Param:
    """One typed parameter: its kind (bool/int/float/str), choices, bounds and default."""

    name: str
    kind: type
    default: Any
    choices: tuple[Any, ...] | None = None
    bounds: Range | None = None
    optional: bool = False

    def check(self, value: Any, where: str) -> Any:
        """The value, normalised (ints become floats for float parameters), or ValueError naming it."""
        what = f"{where}, parameter {self.name!r}"
        if value is None and self.optional:
            return None
        if self.choices is not None:
            if value not in self.choices or isinstance(value, bool) != isinstance(self.choices[0], bool):
                raise ValueError(f"{what} must be one of {self.choices}, got {value!r}")
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{what} must be a bool, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{what} must be a string, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{what} must be an integer, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{what} must be a finite number, got {value!r}")
        if self.bounds is not None and not self.bounds.holds(value):
            raise ValueError(f"{what} must be {self.bounds.describe()}, got {value!r}")
        return value if self.kind is int else float(value)


def _param(name: str, hint: Any, default: Any, where: str) -> Param:
    bounds = None
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        bounds = next((e for e in extras if isinstance(e, Range)), None)
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"{where}: parameter {name!r} has an unsupported union type {hint!r}")
        hint = args[0]
        if typing.get_origin(hint) is Annotated:
            hint, *extras = typing.get_args(hint)
            bounds = bounds or next((e for e in extras if isinstance(e, Range)), None)
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        return Param(name, type(choices[0]), default, choices=choices, optional=optional)
    if hint not in (bool, int, float, str):
        raise TypeError(f"{where}: parameter {name!r} must be annotated bool, int, float, str, a Literal, "
                        f"optionally Annotated[..., Range(...)] or | None; got {hint!r}")
    return Param(name, hint, default, bounds=bounds, optional=optional)


def signature_params(fn: Callable[..., Any], where: str, skip: int = 1) -> dict[str, Param]:
    """The typed parameters of ``fn`` after its first ``skip`` positional ones; TypeError if untyped."""
    hints = typing.get_type_hints(fn, include_extras=True)
    params: dict[str, Param] = {}
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        if i < skip:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"{where}: *args / **kwargs are not allowed; list every parameter")
        if p.default is p.empty or p.name not in hints:
            raise TypeError(f"{where}: parameter {p.name!r} needs a type annotation and a default")
        param = _param(p.name, hints[p.name], p.default, where)
        params[p.name] = param
        param.check(p.default, where)  # the default itself must be valid
    return params


def check_params(spec: Mapping[str, Param], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Every parameter of ``spec`` (defaults filled in), checked; ValueError naming an unknown or bad key."""
    for key in values:
        if key not in spec:
            raise ValueError(f"unknown parameter {key!r} for {where}; accepted: {', '.join(spec)}")
    return {k: p.check(values.get(k, p.default), where) for k, p in spec.items()}


class TypedFunction:
    """A function whose keyword parameters are typed (see the module docstring); calling it checks them.

    ``params`` maps each name to its :class:`Param`; ``defaults`` maps it to its default;
    ``check(values)`` returns every parameter (defaults filled in) or raises ValueError naming the key.
    """

    def __init__(self, fn: Callable[..., Any], where: str, skip: int = 1) -> None:
        self.fn = fn
        self.where = where
        self.params = signature_params(fn, where, skip)
        functools.update_wrapper(self, fn)

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.params.items()}

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return check_params(self.params, values, self.where)

    def __call__(self, *args: Any, **params: Any) -> Any:
        return self.fn(*args, **self.check(params))

    def __repr__(self) -> str:
        return f"<{self.where}: {self.fn.__module__}.{self.fn.__qualname__}>"
