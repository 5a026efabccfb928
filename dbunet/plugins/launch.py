"""Host-side launchers: allocate outputs, choose blocks and grids, launch the Triton kernels.

Called with torch tensors on a CUDA device, or on the CPU under TRITON_INTERPRET=1 (tests).
FP32 inputs use IEEE fp32 dots (no TF32), so FP32 results match the reference closely.
"""

from __future__ import annotations

import torch
import triton

from dbunet.plugins import kernels


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


def box_constraint(x, q, k, v, boxes, valid, gate):
    B, C, H, W = x.shape
    N, D = boxes.shape[1], q.shape[-1]
    out = torch.empty_like(x)
    block_p, block_n = 32, _pow2(N + 1)
    grid = (triton.cdiv(H * W, block_p), B)
    kernels.box_constraint_kernel[grid](
        x.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), boxes.contiguous(),
        valid.contiguous(), gate.reshape(1).contiguous(),
        C, H, W, D, N, out,
        BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_D=32, BLOCK_C=32, IEEE=x.dtype == torch.float32,
    )
    return out


def spatial_cross_attention(q, k, v, num_heads: int):
    B, P, CQ = q.shape
    CV = v.shape[-1]
    dk, dv = CQ // num_heads, CV // num_heads
    out = torch.empty_like(v)
    block_m = 32
    grid = (triton.cdiv(P, block_m), B * num_heads)
    kernels.spatial_attention_kernel[grid](
        q.contiguous(), k.contiguous(), v.contiguous(),
        P, CQ, CV, num_heads, dk, dv, out,
        BLOCK_M=block_m, BLOCK_N=32, BLOCK_DK=_pow2(dk), BLOCK_DV=_pow2(dv), IEEE=q.dtype == torch.float32,
    )
    return out


def channel_cross_attention(q, k, v):
    B, P, C = q.shape
    CC = k.shape[-1]
    ieee = q.dtype == torch.float32
    attn = torch.empty(B, C, CC, device=q.device, dtype=torch.float32)
    kernels.channel_attention_weights_kernel[(triton.cdiv(C, 32), B)](
        q.contiguous(), k.contiguous(), P, C, CC, attn,
        BLOCK_C=32, BLOCK_CC=32, BLOCK_P=32, IEEE=ieee,
    )
    out = torch.empty_like(q)
    kernels.channel_attention_apply_kernel[(triton.cdiv(P, 32), triton.cdiv(C, 32), B)](
        attn, v.contiguous(), P, C, CC, out, BLOCK_P=32, BLOCK_C=32, BLOCK_CC=32, IEEE=ieee,
    )
    return out
