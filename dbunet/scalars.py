"""What the API's checks call a number, and NumPy scalars as Python's own. The checks accept `int` and `float`,
never `bool` (an `int` to Python, a mistake to every caller); a caller's `rng.integers(...)` seed or `np.float32`
coordinate is the same number and should pass them, and a NumPy bool should still be refused as a bool.
Torch-free."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def python_scalar(value: Any) -> Any:
    """`value` with NumPy scalars (also inside a tuple or list) turned into int, float, bool or str; anything
    else unchanged, for the caller's own check to judge."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | list):
        return type(value)(python_scalar(v) for v in value)
    return value


def tuple_for_list(value: Any) -> Any:
    """A JSON list as the tuple a Python default would be, so that a config file's value compares equal to a
    constructor's default; anything else unchanged."""
    return tuple(value) if isinstance(value, list) else value


def is_whole(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite int or float that is not a bool (NaN passes no range check, so it is refused here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
