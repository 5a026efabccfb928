"""Each Triton kernel against its PyTorch reference, over the op table (interpreter on the CPU)."""

import pytest
import torch
from triton_interpreter import require_triton

require_triton()

from dbunet.plugins.table import CASES, TOLERANCE, fused, max_rel_error, reference_fp32  # noqa: E402 -- after the skip

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: TRITON_INTERPRET=1 (conftest)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c.op}[{c.label}]" for c in CASES])
def test_kernel_matches_reference(case, dtype):
    g = torch.Generator().manual_seed(case.seed)
    args = case.make(g, dtype, DEVICE)
    got = fused(case.op)(*args)
    want = reference_fp32(case.op, tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert got.shape == want.shape and got.dtype == dtype
    assert torch.isfinite(got.float()).all()
    err = max_rel_error(got.cpu(), want)
    assert err <= TOLERANCE[dtype], f"{case.op} {case.label} {dtype}: max rel error {err:.2e}"
