"""Each Triton kernel against its PyTorch reference, over the op table (interpreter on the CPU)."""

import sys
from pathlib import Path

import pytest
import torch
from triton_interpreter import require_triton

require_triton()

from dbunet.plugins.table import CASES, TOLERANCE, aot_cases, fused, max_rel_error, reference_fp32  # noqa: E402 -- after the skip

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: TRITON_INTERPRET=1 (conftest)
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))  # gpu_check, for its plugin launches


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


@pytest.mark.parametrize("dtype_case", aot_cases(), ids=lambda dc: f"{dc[0]}-{dc[1].op}[{dc[1].label}]")
def test_every_aot_launch_configuration_matches_the_reference(dtype_case):
    """The block sizes the plugins' PTX is compiled with (aot.kernel_config) and the grid and scalars their launch
    functions compute, run on the same kernels: a configuration is chosen for registers and shared memory
    (tests/plugins/test_aot.py) and must still compute the op."""
    from gpu_check import plugin_launch  # the GPU check launches the PTX the same way

    from dbunet.plugins import aot, kernels

    name, case = dtype_case
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[name]

    def configuration(kernel: str, **shape):  # the plugin's block sizes, without PTX: the interpreter runs the kernel
        config = aot.kernel_config(kernel, name, **shape)
        return aot.CompiledKernel(kernel, "", config.num_warps, 0, config.constants, "sm_90")

    args = case.make(torch.Generator().manual_seed(case.seed), dtype, DEVICE)
    compiled, launch, scalars, tensors, out = plugin_launch(case, args, configuration)
    kernel = kernels.box_constraint_kernel if case.op == "box_constraint" else kernels.spatial_attention_kernel
    kernel[(launch.grid_x, launch.grid_y, launch.grid_z)](*tensors, *scalars, out, **compiled.constants,
                                                          IEEE=name == "fp32")
    want = reference_fp32(case.op, tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    err = max_rel_error(out.cpu(), want)
    assert err <= TOLERANCE[dtype], f"{name} {case.op} {case.label}: max rel error {err:.2e}"
