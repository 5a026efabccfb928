"""The DB-UNet's custom ops as `torch.library` custom ops with plain-PyTorch reference bodies.

Each op is opaque to tracing, so the exporter emits one node per op, and each is exactly
what one fused kernel computes (the layer norms and depthwise-separable projections around
them stay ordinary graph ops that every backend already fuses):

  dbunet::box_constraint            masked grounding attention + gated residual
  dbunet::channel_cross_attention   DCA's channel cross-attention, C x C_c over channels
  dbunet::spatial_cross_attention   DCA's spatial cross-attention over the P tokens
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula


# -- BoxConstraint -----------------------------------------------------------------------------
def box_masks(boxes: Tensor, valid: Tensor, height: int, width: int) -> Tensor:
    """Rasterise N boxes at H x W: [B,N,4] (x0,y0,x1,y1 in [0,1]), [B,N] -> bool [B,N,H*W].

    A pixel belongs to a box when its centre ((x+0.5)/W, (y+0.5)/H) lies in [x0,x1) x [y0,y1).
    Coordinates are clipped to [0,1]; an empty box (x1 <= x0 or y1 <= y0) masks nothing; a slot
    with valid == 0 (padding) masks nothing.
    """
    b = boxes.clamp(0.0, 1.0)
    cx = (torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5) / width  # (W,)
    cy = (torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5) / height  # (H,)
    in_x = (cx >= b[..., 0:1]) & (cx < b[..., 2:3])  # (B, N, W)
    in_y = (cy >= b[..., 1:2]) & (cy < b[..., 3:4])  # (B, N, H)
    mask = in_y[..., :, None] & in_x[..., None, :]  # (B, N, H, W)
    mask = mask & (valid > 0)[..., None, None]
    return mask.flatten(2)  # (B, N, H*W)


def box_constraint_reference(
    x: Tensor, q: Tensor, k: Tensor, v: Tensor, boxes: Tensor, valid: Tensor, gate: Tensor
) -> Tensor:
    """x [B,C,H,W] + gate * masked attention of every pixel over the grounding tokens.

    q [B,P,d] (P = H*W, one query per pixel); k [B,N+1,d], v [B,N+1,C] for the always-visible
    null token (index 0) and the N box tokens; boxes [B,N,4]; valid [B,N]; gate: scalar tensor.
    """
    B, C, H, W = x.shape
    visible = box_masks(boxes, valid, H, W)  # (B, N, P)
    null_visible = torch.ones(B, 1, H * W, dtype=torch.bool, device=x.device)
    visible = torch.cat([null_visible, visible], dim=1)  # (B, N+1, P)
    logits = torch.einsum("bpd,bnd->bnp", q, k) / math.sqrt(q.shape[-1])  # (B, N+1, P)
    logits = logits.masked_fill(~visible, float("-inf"))
    weights = torch.softmax(logits, dim=1)  # over the N+1 tokens; the null token keeps it finite
    out = torch.einsum("bnp,bnc->bcp", weights, v).reshape(B, C, H, W)
    return x + gate.to(x.dtype) * out


box_constraint = torch.library.custom_op(
    "dbunet::box_constraint", box_constraint_reference, mutates_args=()
)


@box_constraint.register_fake
def _(x, q, k, v, boxes, valid, gate):
    return torch.empty_like(x)


@register_flop_formula(torch.ops.dbunet.box_constraint)
def _box_flops(x_shape, q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    B, P, d = q_shape
    n1, C = k_shape[1], v_shape[2]
    return 2 * B * P * n1 * (d + C)


# -- DualCrossAttention cores ------------------------------------------------------------------
def channel_cross_attention_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """CCA = (softmax(Q^T K / sqrt(C_c)) V^T)^T: q [B,P,C], k and v [B,P,C_c] -> [B,P,C]."""
    scale = 1.0 / math.sqrt(k.shape[-1])
    attn = torch.softmax(q.transpose(1, 2) @ k * scale, dim=-1)  # (B, C, C_c), a channel attention
    return v @ attn.transpose(1, 2)  # (B, P, C_c) @ (B, C_c, C) -> (B, P, C)


channel_cross_attention = torch.library.custom_op(
    "dbunet::channel_cross_attention", channel_cross_attention_reference, mutates_args=()
)


@channel_cross_attention.register_fake
def _(q, k, v):
    return torch.empty_like(q)


@register_flop_formula(torch.ops.dbunet.channel_cross_attention)
def _cca_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    B, P, C = q_shape
    Cc = k_shape[2]
    return 2 * B * P * C * Cc * 2  # Gram matrix + application to V


def spatial_cross_attention_reference(q: Tensor, k: Tensor, v: Tensor, num_heads: int) -> Tensor:
    """SCA = softmax(Q K^T / sqrt(d_k)) V per head: q and k [B,P,C_c], v [B,P,C] -> [B,P,C]."""
    B, P, Cc = q.shape
    C = v.shape[-1]
    qh = q.reshape(B, P, num_heads, Cc // num_heads).transpose(1, 2)  # (B, h, P, C_c/h)
    kh = k.reshape(B, P, num_heads, Cc // num_heads).transpose(1, 2)  # (B, h, P, C_c/h)
    vh = v.reshape(B, P, num_heads, C // num_heads).transpose(1, 2)  # (B, h, P, C/h)
    attn = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(Cc // num_heads), dim=-1)  # (B, h, P, P)
    return (attn @ vh).transpose(1, 2).reshape(B, P, C)


spatial_cross_attention = torch.library.custom_op(
    "dbunet::spatial_cross_attention", spatial_cross_attention_reference, mutates_args=()
)


@spatial_cross_attention.register_fake
def _(q, k, v, num_heads):
    return torch.empty_like(v)


@register_flop_formula(torch.ops.dbunet.spatial_cross_attention)
def _sca_flops(q_shape, k_shape, v_shape, *args, **kwargs) -> int:
    B, P, Cc = q_shape
    C = v_shape[2]
    return 2 * B * P * P * (Cc + C)


# -- autograd: recompute the reference under autograd (the ops stay trainable) -------------------
def _register_recompute_autograd(op, reference) -> None:
    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs
        ctx.save_for_backward(*(t for t in inputs if isinstance(t, Tensor)))

    def backward(ctx, grad):
        saved = iter(ctx.saved_tensors)
        args = [next(saved).detach().requires_grad_(t.is_floating_point()) if isinstance(t, Tensor) else t
                for t in ctx.inputs]
        leaves = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
        with torch.enable_grad():
            out = reference(*args)
        grads = iter(torch.autograd.grad(out, leaves, grad, allow_unused=True))
        return tuple(next(grads) if isinstance(a, Tensor) and a.requires_grad else None for a in args)

    op.register_autograd(backward, setup_context=setup_context)


_register_recompute_autograd(box_constraint, box_constraint_reference)
_register_recompute_autograd(channel_cross_attention, channel_cross_attention_reference)
_register_recompute_autograd(spatial_cross_attention, spatial_cross_attention_reference)
