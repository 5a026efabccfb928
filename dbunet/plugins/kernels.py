"""Triton kernels for BoxConstraint, SCA and CCA (docs/architecture.md 3.2), FP16 or FP32 in, FP32 accumulation.

Every kernel computes exactly what its PyTorch reference in dbunet.models.ops computes; the op
table in dbunet.plugins.table pairs each with that reference. Shapes are ragged-safe: every load
and store is masked, so P, C, d and N need not be multiples of a block.

Parameter order is TensorRT's AOT plugin convention: input pointers, then int32 scalars, then
output pointers (then compile-time constants). Scales are derived in-kernel from the dims, since
a TensorRT AOT launch passes only int32 scalars.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def box_constraint_kernel(
    x_ptr, q_ptr, k_ptr, v_ptr, boxes_ptr, valid_ptr, gate_ptr,
    C, H, W, D, N,
    out_ptr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One program: BLOCK_P pixels of one sample; all N+1 tokens fit in BLOCK_N.

    x, out [B,C,H,W]; q [B,P,D]; k [B,N+1,D]; v [B,N+1,C]; boxes [B,N,4]; valid [B,N]; gate [1].
    """
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    P = H * W
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    n_ok = offs_n < N + 1

    # 3. logits q(p) . k(g_n) / sqrt(d), accumulated in fp32 over d
    logits = tl.zeros([BLOCK_P, BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q = tl.load(q_ptr + b * P * D + offs_p[:, None] * D + offs_d[None, :],
                    mask=p_ok[:, None] & d_ok[None, :], other=0.0)
        k = tl.load(k_ptr + b * (N + 1) * D + offs_n[None, :] * D + offs_d[:, None],
                    mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        if IEEE:
            logits += tl.dot(q, k, input_precision="ieee")
        else:
            logits += tl.dot(q, k)
    logits = logits / tl.sqrt(D.to(tl.float32))

    # 2. masks rasterised on the fly: pixel centre in [x0,x1) x [y0,y1), boxes clipped to [0,1]
    cy = ((offs_p // W).to(tl.float32) + 0.5) / H
    cx = ((offs_p % W).to(tl.float32) + 0.5) / W
    is_box = (offs_n >= 1) & n_ok
    box = b * N * 4 + (offs_n - 1) * 4
    x0 = tl.minimum(tl.maximum(tl.load(boxes_ptr + box + 0, mask=is_box, other=0.0).to(tl.float32), 0.0), 1.0)
    y0 = tl.minimum(tl.maximum(tl.load(boxes_ptr + box + 1, mask=is_box, other=0.0).to(tl.float32), 0.0), 1.0)
    x1 = tl.minimum(tl.maximum(tl.load(boxes_ptr + box + 2, mask=is_box, other=0.0).to(tl.float32), 0.0), 1.0)
    y1 = tl.minimum(tl.maximum(tl.load(boxes_ptr + box + 3, mask=is_box, other=0.0).to(tl.float32), 0.0), 1.0)
    valid = tl.load(valid_ptr + b * N + offs_n - 1, mask=is_box, other=0.0).to(tl.float32) > 0.0
    inside = ((cx[:, None] >= x0[None, :]) & (cx[:, None] < x1[None, :])
              & (cy[:, None] >= y0[None, :]) & (cy[:, None] < y1[None, :]))
    visible = (inside & (valid & is_box)[None, :]) | (offs_n == 0)[None, :]  # the null token is always visible
    logits = tl.where(visible, logits, float("-inf"))

    # softmax over the tokens (row max is finite: the null token is visible)
    m = tl.max(logits, axis=1)
    w = tl.exp(logits - m[:, None])
    w = w / tl.sum(w, axis=1)[:, None]

    # 4. V and the gated residual, BLOCK_C channels at a time; x and out are [C, P] per sample
    gate = tl.load(gate_ptr).to(tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        v = tl.load(v_ptr + b * (N + 1) * C + offs_n[:, None] * C + offs_c[None, :],
                    mask=n_ok[:, None] & c_ok[None, :], other=0.0)
        if IEEE:
            o = tl.dot(w.to(v.dtype), v, input_precision="ieee")
        else:
            o = tl.dot(w.to(v.dtype), v)
        ptrs = b * C * P + offs_c[None, :] * P + offs_p[:, None]
        ok = p_ok[:, None] & c_ok[None, :]
        x = tl.load(x_ptr + ptrs, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + ptrs, (x + gate * o).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def spatial_attention_kernel(
    q_ptr, k_ptr, v_ptr,
    P, CQ, CV, HEADS, DK, DV,
    out_ptr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
    IEEE: tl.constexpr,
):
    """Flash attention (online softmax, no P x P matrix): one program = BLOCK_M queries of one head.

    q, k [B,P,CQ] with CQ = HEADS*DK; v, out [B,P,CV] with CV = HEADS*DV.
    """
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // HEADS).to(tl.int64)
    h = bh % HEADS
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, BLOCK_DK)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok, dk_ok, dv_ok = offs_m < P, offs_dk < DK, offs_dv < DV
    q = tl.load(q_ptr + b * P * CQ + offs_m[:, None] * CQ + h * DK + offs_dk[None, :],
                mask=m_ok[:, None] & dk_ok[None, :], other=0.0)
    scale = 1.0 / tl.sqrt(DK.to(tl.float32))

    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for n0 in range(0, P, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < P
        k = tl.load(k_ptr + b * P * CQ + offs_n[None, :] * CQ + h * DK + offs_dk[:, None],
                    mask=n_ok[None, :] & dk_ok[:, None], other=0.0)
        if IEEE:
            s = tl.dot(q, k, input_precision="ieee") * scale
        else:
            s = tl.dot(q, k) * scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        alpha = tl.exp(row_max - new_max)
        p = tl.exp(s - new_max[:, None])
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + b * P * CV + offs_n[:, None] * CV + h * DV + offs_dv[None, :],
                    mask=n_ok[:, None] & dv_ok[None, :], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        row_max = new_max
    out = acc / row_sum[:, None]
    tl.store(out_ptr + b * P * CV + offs_m[:, None] * CV + h * DV + offs_dv[None, :],
             out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & dv_ok[None, :])


@triton.jit
def channel_attention_weights_kernel(
    q_ptr, k_ptr,
    P, C, CC,
    attn_ptr,
    BLOCK_C: tl.constexpr, BLOCK_CC: tl.constexpr, BLOCK_P: tl.constexpr, IEEE: tl.constexpr,
):
    """CCA, part 1: attn [B,C,CC] = softmax over CC of (Q^T K) / sqrt(CC), Gram accumulated over P.

    One program owns BLOCK_C rows: it writes their raw Gram tiles while keeping an online row
    max and sum, then normalises its own rows in place (fp32 attn buffer).
    """
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    scale = 1.0 / tl.sqrt(CC.to(tl.float32))
    row_max = tl.full([BLOCK_C], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_C], dtype=tl.float32)
    for cc0 in range(0, CC, BLOCK_CC):
        offs_cc = cc0 + tl.arange(0, BLOCK_CC)
        cc_ok = offs_cc < CC
        gram = tl.zeros([BLOCK_C, BLOCK_CC], dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            p_ok = offs_p < P
            qt = tl.load(q_ptr + b * P * C + offs_p[None, :] * C + offs_c[:, None],
                         mask=c_ok[:, None] & p_ok[None, :], other=0.0)
            kt = tl.load(k_ptr + b * P * CC + offs_p[:, None] * CC + offs_cc[None, :],
                         mask=p_ok[:, None] & cc_ok[None, :], other=0.0)
            if IEEE:
                gram += tl.dot(qt, kt, input_precision="ieee")
            else:
                gram += tl.dot(qt, kt)
        gram = tl.where(cc_ok[None, :], gram * scale, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(gram, axis=1))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(gram - new_max[:, None]), axis=1)
        row_max = new_max
        tl.store(attn_ptr + b * C * CC + offs_c[:, None] * CC + offs_cc[None, :], gram,
                 mask=c_ok[:, None] & cc_ok[None, :])
    for cc0 in range(0, CC, BLOCK_CC):
        offs_cc = cc0 + tl.arange(0, BLOCK_CC)
        ptrs = attn_ptr + b * C * CC + offs_c[:, None] * CC + offs_cc[None, :]
        ok = c_ok[:, None] & (offs_cc < CC)[None, :]
        g = tl.load(ptrs, mask=ok, other=0.0)
        tl.store(ptrs, tl.exp(g - row_max[:, None]) / row_sum[:, None], mask=ok)


@triton.jit
def channel_attention_apply_kernel(
    attn_ptr, v_ptr,
    P, C, CC,
    out_ptr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_CC: tl.constexpr, IEEE: tl.constexpr,
):
    """CCA, part 2: out [B,P,C] = V [B,P,CC] @ attn^T."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok, c_ok = offs_p < P, offs_c < C
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for cc0 in range(0, CC, BLOCK_CC):
        offs_cc = cc0 + tl.arange(0, BLOCK_CC)
        cc_ok = offs_cc < CC
        v = tl.load(v_ptr + b * P * CC + offs_p[:, None] * CC + offs_cc[None, :],
                    mask=p_ok[:, None] & cc_ok[None, :], other=0.0)
        a = tl.load(attn_ptr + b * C * CC + offs_c[None, :] * CC + offs_cc[:, None],
                    mask=c_ok[None, :] & cc_ok[:, None], other=0.0)
        if IEEE:
            acc += tl.dot(v.to(tl.float32), a, input_precision="ieee")
        else:
            acc += tl.dot(v, a.to(v.dtype))
    tl.store(out_ptr + b * P * C + offs_p[:, None] * C + offs_c[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=p_ok[:, None] & c_ok[None, :])
