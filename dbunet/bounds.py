"""Bounds on every config field that sizes memory or time: a manifest is untrusted input, and a schema-valid
value such as 2^31-1 text tokens or 2^20 latent channels must be refused before anything is allocated. Torch-free."""

from __future__ import annotations

import math
from typing import Any

from dbunet.errors import ConfigError

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
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
                raise ConfigError(f"{owner}.{name}: {v!r} is outside {lo:g}..{hi:g}")
