"""Each Triton kernel against its PyTorch reference, over the op table (interpreter on the CPU)."""

import sys
from pathlib import Path

import pytest
import torch
from triton_interpreter import require_triton

require_triton()

from dbunet.plugins.table import (  # noqa: E402 -- after the skip
    CASES,
    DTYPES,
    TOLERANCE,
    aot_cases,
    fused,
    max_rel_error,
    opt_in_cases,
    reference_fp32,
)

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
    dtype = DTYPES[name]

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


@pytest.mark.parametrize("dtype_case", opt_in_cases(), ids=lambda dc: f"{dc[0]}-{dc[1].op}[{dc[1].label}]")
def test_every_opt_in_launch_configuration_matches_the_reference(dtype_case):
    """The configurations only Triton's own launcher takes (over 48 KB of shared memory: fp32 attention at sd15's
    deepest head size), through that launcher."""
    name, case = dtype_case
    dtype = DTYPES[name]
    args = case.make(torch.Generator().manual_seed(case.seed), dtype, DEVICE)
    want = reference_fp32(case.op, tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    err = max_rel_error(fused(case.op)(*args).cpu(), want)
    assert err <= TOLERANCE[dtype], f"{name} {case.op} {case.label}: max rel error {err:.2e}"


class KernelSpy:
    """Stands for a @triton.jit kernel: records the grid and keyword arguments of `kernel[grid](...)`."""

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grid, self.kwargs = grid, kwargs
        return launch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("dk,dv", [(8, 8), (80, 40), (160, 80), (320, 160)], ids=lambda d: str(d))
def test_the_jit_launch_takes_the_checked_attention_configuration(monkeypatch, dtype, dk, dv):
    """Triton's own launcher (the op table, TorchPipeline on CUDA) launches with the blocks, warps and stages that
    tools/ptx_check.py assembles without spills (aot.kernel_config, with its opt-in rows), not fixed ones: fixed
    32 x 32 blocks in three stages needed 260 KB of shared memory for fp32 attention at sd15's deepest level."""
    from dbunet.plugins import aot, kernels, launch

    spy = KernelSpy()
    monkeypatch.setattr(kernels, "spatial_attention_kernel", spy)
    heads, P = 2, 37
    q, v = torch.zeros(1, P, heads * dk, dtype=dtype), torch.zeros(1, P, heads * dv, dtype=dtype)
    launch.spatial_cross_attention(q, q, v, heads)
    config = aot.kernel_config("spatial_attention", "fp32" if dtype == torch.float32 else "fp16", dk=dk, dv=dv,
                               opt_in=True)
    want = {**config.constants, "num_warps": config.num_warps, "IEEE": dtype == torch.float32,
            "enable_fp_fusion": True}
    want |= {"num_stages": config.num_stages} if config.num_stages else {}
    assert spy.kwargs == want
    assert spy.grid == (-(-P // config.constants["BLOCK_M"]), heads)


@pytest.mark.parametrize("boxes", [0, 5, 30, 40, 100])
def test_the_jit_launch_takes_the_checked_box_configuration(monkeypatch, boxes):
    from dbunet.plugins import aot, kernels, launch

    spy = KernelSpy()
    monkeypatch.setattr(kernels, "box_constraint_kernel", spy)
    B, C, H, W, D = 2, 8, 9, 7, 16
    launch.box_constraint(torch.zeros(B, C, H, W), torch.zeros(B, H * W, D), torch.zeros(B, boxes + 1, D),
                          torch.zeros(B, boxes + 1, C), torch.zeros(B, boxes, 4), torch.zeros(B, boxes),
                          torch.tensor(1.0))
    config = aot.kernel_config("box_constraint", "fp32", slots=boxes + 1)
    assert spy.kwargs == {**config.constants, "num_warps": config.num_warps, "IEEE": True, "enable_fp_fusion": True}
    assert spy.grid == (-(-H * W // config.constants["BLOCK_P"]), B)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_the_jit_launch_takes_the_checked_channel_attention_configuration(monkeypatch, dtype):
    """Channel cross-attention has no TensorRT plugin; its two kernels take their blocks and warps from the same
    table (tools/ptx_check.py assembles them: fixed 32^3 blocks with 4 warps spilled in fp32)."""
    from dbunet.plugins import aot, kernels, launch

    spies = {name: KernelSpy() for name in ("channel_attention_weights", "channel_attention_apply")}
    for name, spy in spies.items():
        monkeypatch.setattr(kernels, f"{name}_kernel", spy)
    B, P, C = 2, 37, 40
    launch.channel_cross_attention(torch.zeros(B, P, C, dtype=dtype), torch.zeros(B, P, 2 * C, dtype=dtype),
                                   torch.zeros(B, P, 2 * C, dtype=dtype))
    configs = {name: aot.kernel_config(name, "fp32" if dtype == torch.float32 else "fp16") for name in spies}
    for name, spy in spies.items():
        config = configs[name]
        assert spy.kwargs == {**config.constants, "num_warps": config.num_warps, "IEEE": dtype == torch.float32,
                              "enable_fp_fusion": True}, name
    weights, apply = configs["channel_attention_weights"].constants, configs["channel_attention_apply"].constants
    assert spies["channel_attention_weights"].grid == (-(-C // weights["BLOCK_C"]), B)
    assert spies["channel_attention_apply"].grid == (-(-P // apply["BLOCK_P"]), -(-C // apply["BLOCK_C"]), B)
