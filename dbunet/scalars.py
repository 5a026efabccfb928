"""NumPy scalars as Python's own. The API's checks accept `int` and `float` (never `bool`); a caller's
`rng.integers(...)` seed or `np.float32` coordinate is the same number and should pass them, and a NumPy bool
should still be refused as a bool. Torch-free."""

from __future__ import annotations

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
