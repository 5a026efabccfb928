"""Bounds on every config field that sizes memory or time: a manifest is untrusted input, and a schema-valid
value such as 2^31-1 text tokens or 2^20 latent channels must be refused before anything is allocated. Torch-free."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from dbunet.errors import ConfigError
from dbunet.scalars import is_whole

Range = tuple[float, float]


def check_bounds(owner: str, obj: Any, ranges: dict[str, Range], counts: dict[str, Range] | None = None) -> None:
    """Each named field within [lo, hi] (every element, for tuples); tuple fields' lengths within `counts`."""
    for name, (lo, hi) in (counts or {}).items():
        n = len(getattr(obj, name))
        if not lo <= n <= hi:
            raise ConfigError(f"{owner}.{name}: {n} entries, expected {lo:g}..{hi:g}")
    for name, (lo, hi) in ranges.items():
        value = getattr(obj, name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{owner}.{name}: {v!r} is not a number (expected {lo:g}..{hi:g})")
            if not math.isfinite(v) or not lo <= v <= hi:
                raise ConfigError(f"{owner}.{name}: {v!r} is outside {lo:g}..{hi:g}")


def choices(annotation: Any) -> tuple | None:
    """The allowed values of a Literal annotation (None among them for `Literal[...] | None`); None if the
    annotation is not a Literal."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [choices(a) for a in typing.get_args(annotation)]
        if any(f is not None for f in found):
            return tuple(v for f, a in zip(found, typing.get_args(annotation), strict=True)
                         for v in (f if f is not None else (None,) if a is type(None) else ()))
    return None


def check_flags(owner: str, obj: Any) -> None:
    """Every dataclass field annotated `bool` holds a bool, in nested dataclasses too: a config read from a folder's
    JSON may hold "false", which Python reads as true."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        optional = hints[f.name] == bool | None  # None: a default decided elsewhere
        if (hints[f.name] is bool or optional) and not (isinstance(value, bool) or optional and value is None):
            raise ConfigError(f"{owner}.{f.name} must be true or false, got {value!r}")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_flags(f"{owner}.{f.name}", value)


def check_choices(owner: str, obj: Any) -> None:
    """Every dataclass field annotated with a Literal holds one of its values (read from the annotation, so
    the choices are written once)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        allowed = choices(hints[f.name])
        value = getattr(obj, f.name)
        if allowed is not None and value not in allowed:
            shown = ", ".join(repr(v) for v in allowed)
            raise ConfigError(f"{owner}.{f.name} must be one of {shown}, got {value!r}")


def check_numbers(owner: str, obj: Any) -> None:
    """Every field annotated `int` or `float` (or either `| None`) holds such a number: a config read from a folder's
    JSON may hold "1", which fails later in a comparison with a TypeError instead of naming the key. An int field
    takes no fraction; a bool is no number here."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kinds = set(typing.get_args(hints[f.name])) - {type(None)} or {hints[f.name]}
        value = getattr(obj, f.name)
        if value is None and type(None) in typing.get_args(hints[f.name]):
            continue
        if kinds == {int} and not is_whole(value):
            raise ConfigError(f"{owner}.{f.name} must be an integer, got {value!r}")
        if kinds == {float} and not (is_whole(value) or isinstance(value, float)):  # NaN: the field's range refuses
            raise ConfigError(f"{owner}.{f.name} must be a number, got {value!r}")
