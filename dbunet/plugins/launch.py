"""Host-side launchers: allocate outputs, choose blocks and grids, launch the Triton kernels.

Called with torch tensors on a CUDA device, or on the CPU under TRITON_INTERPRET=1 (tests).
FP32 inputs use IEEE fp32 dots (no TF32), so FP32 results match the reference closely.
Block sizes, warps and stages come from the table the TensorRT plugins compile with (aot.kernel_config), chosen
with ptxas for registers and shared memory; this launcher may also take its opt-in rows (more than 48 KB), and
the table has the channel cross-attention kernels, which only this launcher runs.
"""

from __future__ import annotations

import functools

import torch
import triton

from dbunet.plugins import aot, kernels
from dbunet.plugins.aot import LaunchConfig, kernel_config


def _table_dtype(t: torch.Tensor) -> str:
    return "fp32" if t.dtype == torch.float32 else "fp16"  # 2-byte floats share the fp16 blocks


@functools.cache
def require_sound_ptxas(cc: int) -> None:
    """Triton assembles what it launches with its own ptxas: refuse one below the floor measured for sm_`cc`
    (aot.SOUND_ASSEMBLER), before the first launch."""
    ptxas = aot.triton_ptxas(cc)
    aot.require_sound_assembler(
        cc, ptxas.release, f"Triton's ptxas {ptxas.path}",
        "point TRITON_PTXAS_PATH at a newer one (a CUDA toolkit's bin/ptxas); Triton 3.9 brings one for sm_90")


def _on_device(t: torch.Tensor) -> None:
    if t.is_cuda:  # on the CPU the kernels run under Triton's interpreter: nothing is assembled
        major, minor = torch.cuda.get_device_capability(t.device)
        require_sound_ptxas(major * 10 + minor)


def _options(config: LaunchConfig) -> dict:
    """A launch's keywords: the configuration, and FP fusion stated as the plugins' PTX is compiled (Triton 3.9
    warns at the first compile that leaves it to its default, which changes in 3.10)."""
    return {**config.constants, "num_warps": config.num_warps, "enable_fp_fusion": True,
            **({"num_stages": config.num_stages} if config.num_stages else {})}


def box_constraint(x, q, k, v, boxes, valid, gate):
    _on_device(x)
    B, C, H, W = x.shape
    N, D = boxes.shape[1], q.shape[-1]
    out = torch.empty_like(x)
    config = kernel_config("box_constraint", _table_dtype(x), slots=N + 1)
    grid = (triton.cdiv(H * W, config.constants["BLOCK_P"]), B)
    kernels.box_constraint_kernel[grid](
        x.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), boxes.contiguous(),
        valid.contiguous(), gate.reshape(1).contiguous(),
        C, H, W, D, N, out,
        **_options(config), IEEE=x.dtype == torch.float32,
    )
    return out


def spatial_cross_attention(q, k, v, num_heads: int):
    _on_device(q)
    B, P, CQ = q.shape
    CV = v.shape[-1]
    dk, dv = CQ // num_heads, CV // num_heads
    out = torch.empty_like(v)
    config = kernel_config("spatial_attention", _table_dtype(q), dk=dk, dv=dv, opt_in=True)
    grid = (triton.cdiv(P, config.constants["BLOCK_M"]), B * num_heads)
    kernels.spatial_attention_kernel[grid](
        q.contiguous(), k.contiguous(), v.contiguous(),
        P, CQ, CV, num_heads, dk, dv, out,
        **_options(config), IEEE=q.dtype == torch.float32,
    )
    return out


def channel_cross_attention(q, k, v):
    _on_device(q)
    B, P, C = q.shape
    CC = k.shape[-1]
    ieee = q.dtype == torch.float32
    attn = torch.empty(B, C, CC, device=q.device, dtype=torch.float32)
    weights = kernel_config("channel_attention_weights", _table_dtype(q))
    kernels.channel_attention_weights_kernel[(triton.cdiv(C, weights.constants["BLOCK_C"]), B)](
        q.contiguous(), k.contiguous(), P, C, CC, attn, **_options(weights), IEEE=ieee,
    )
    out = torch.empty_like(q)
    apply = kernel_config("channel_attention_apply", _table_dtype(q))
    grid = (triton.cdiv(P, apply.constants["BLOCK_P"]), triton.cdiv(C, apply.constants["BLOCK_C"]), B)
    kernels.channel_attention_apply_kernel[grid](
        attn, v.contiguous(), P, C, CC, out, **_options(apply), IEEE=ieee,
    )
    return out
