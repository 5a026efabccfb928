"""Triton's CPU interpreter, which the kernel tests run on here (tests/conftest.py sets TRITON_INTERPRET=1).

Triton 3.6 and older convert a loop bound given as a kernel argument with int() on a one-element array, which
NumPy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"); Triton 3.7 squeezes it
first. With such a pair every kernel test would fail inside Triton, so they skip saying which pair and what
to install. The probe runs the failing construct itself rather than comparing versions.
"""

from __future__ import annotations

import functools
import os

import pytest


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _interpreter_fault() -> str | None:
    import numpy as np
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def count_blocks(out_ptr, n, BLOCK: tl.constexpr):
        total = 0
        for _ in range(0, n, BLOCK):  # a runtime loop bound: what the dbunet kernels do over d and channels
            total += 1
        tl.store(out_ptr, total)

    out = torch.zeros(1, dtype=torch.int32)
    try:
        count_blocks[(1,)](out, 10, BLOCK=4)
    except Exception as exc:  # noqa: BLE001 -- Triton wraps it in InterpreterError; the text tells
        if "0-dimensional arrays" not in repr(exc):
            raise
        return (f"Triton {triton.__version__}'s CPU interpreter cannot run with NumPy {np.__version__} (it calls "
                f"int() on one-element arrays, which NumPy 2.4 refuses; Triton 3.7 fixed it): "
                f"pip install 'numpy<2.4' or 'triton>=3.7' to run the kernel tests")
    assert int(out[0]) == 3, f"the interpreter counted {int(out[0])} blocks of 4 in 10, not 3"
    return None


def require_triton() -> None:
    """Skip unless Triton is installed and, where the tests interpret kernels on the CPU, its interpreter runs."""
    pytest.importorskip("triton", reason='Triton is not installed (pip install -e ".[dev]")')
    if interpreting() and (fault := _interpreter_fault()):
        pytest.skip(fault, allow_module_level=True)
