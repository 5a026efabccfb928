"""ONNX decompositions of the custom ops, as model-local functions in the `dbunet` domain.

Each custom op exports as one node `dbunet::<Name>` whose definition travels with the model:
ONNX Runtime (or any consumer) inlines the function; TensorRT >= 10.7 replaces the node with the
plugin registered under the same name and namespace when one is loaded. The bodies are the
same math as the PyTorch references in dbunet.models.ops, with every shape dynamic.
"""

from __future__ import annotations

from typing import TypeVar, Union

import onnxscript
from onnxscript import BOOL, DOUBLE, FLOAT, FLOAT16
from onnxscript import opset18 as op
from onnxscript.values import Opset

DOMAIN = "dbunet"
DOMAIN_VERSION = 1
dbunet_opset = Opset(DOMAIN, DOMAIN_VERSION)

# Annotations give the exporter each function's signature (inputs, outputs, type constraints).
T = TypeVar("T", bound=Union[FLOAT, FLOAT16, DOUBLE])
TBox = TypeVar("TBox", bound=Union[FLOAT, FLOAT16, DOUBLE])


@onnxscript.script(dbunet_opset, default_opset=op)
def BoxConstraint(x: T, q: T, k: T, v: T, boxes: TBox, valid: TBox, gate: T) -> T:
    """x + gate * masked attention over [null; N box tokens]; see ops.box_constraint (docs/architecture.md 3.2)."""
    shape = op.Shape(x)  # (B, C, H, W)
    height = op.Cast(op.Gather(shape, 2), to=FLOAT.dtype)
    width = op.Cast(op.Gather(shape, 3), to=FLOAT.dtype)
    # 2. masks rasterised from the pixel centres; boxes clipped to [0, 1]; [x0, x1) x [y0, y1)
    cy = op.Div(op.Add(op.Range(0.0, height, 1.0), 0.5), height)  # (H,)
    cx = op.Div(op.Add(op.Range(0.0, width, 1.0), 0.5), width)  # (W,)
    b = op.Clip(op.Cast(boxes, to=FLOAT.dtype), 0.0, 1.0)
    x0 = op.Slice(b, [0], [1], [2])  # (B, N, 1)
    y0 = op.Slice(b, [1], [2], [2])
    x1 = op.Slice(b, [2], [3], [2])
    y1 = op.Slice(b, [3], [4], [2])
    in_x = op.And(op.GreaterOrEqual(cx, x0), op.Less(cx, x1))  # (B, N, W)
    in_y = op.And(op.GreaterOrEqual(cy, y0), op.Less(cy, y1))  # (B, N, H)
    inside = op.And(op.Unsqueeze(in_y, [3]), op.Unsqueeze(in_x, [2]))  # (B, N, H, W)
    is_valid = op.Unsqueeze(op.Greater(op.Cast(valid, to=FLOAT.dtype), 0.0), [2, 3])  # (B, N, 1, 1)
    pixels = op.Mul(op.Gather(shape, [2]), op.Gather(shape, [3]))
    bn = op.Slice(op.Shape(inside), [0], [2])
    masks = op.Reshape(op.And(inside, is_valid), op.Concat(bn, pixels, axis=0))  # (B, N, P); N may be 0
    # the null token (index 0) is visible everywhere
    null_shape = op.Concat(op.Slice(op.Shape(masks), [0], [1]), [1], op.Slice(op.Shape(masks), [2], [3]), axis=0)
    # (B, N+1, P)
    visible = op.Concat(op.Expand(op.Cast(op.Constant(value_ints=[1]), to=BOOL.dtype), null_shape), masks, axis=1)
    # 3. masked softmax over the tokens, then V
    d = op.Cast(op.Slice(op.Shape(q), [2], [3]), to=FLOAT.dtype)
    logits = op.MatMul(k, op.Transpose(q, perm=[0, 2, 1]))  # (B, N+1, P)
    logits = op.Div(logits, op.CastLike(op.Sqrt(d), logits))
    neg_inf = op.CastLike(op.Constant(value_float=float("-inf")), logits)
    weights = op.Softmax(op.Where(visible, logits, neg_inf), axis=1)
    out = op.MatMul(op.Transpose(v, perm=[0, 2, 1]), weights)  # (B, C, P)
    # 4. gated residual
    return op.Add(x, op.Mul(op.CastLike(gate, x), op.Reshape(out, shape)))


@onnxscript.script(dbunet_opset, default_opset=op)
def ChannelCrossAttention(q: T, k: T, v: T) -> T:
    """(softmax(Q^T K / sqrt(C_c)) V^T)^T: q [B,P,C], k and v [B,P,C_c] -> [B,P,C] (architecture.md 3.2)."""
    cc = op.Cast(op.Slice(op.Shape(k), [2], [3]), to=FLOAT.dtype)
    gram = op.MatMul(op.Transpose(q, perm=[0, 2, 1]), k)  # (B, C, C_c)
    attn = op.Softmax(op.Div(gram, op.CastLike(op.Sqrt(cc), gram)), axis=-1)
    return op.MatMul(v, op.Transpose(attn, perm=[0, 2, 1]))  # (B, P, C)


@onnxscript.script(dbunet_opset, default_opset=op)
def SpatialCrossAttention(q: T, k: T, v: T, num_heads: int) -> T:
    """Multi-head softmax(Q K^T / sqrt(d_k)) V: q and k [B,P,C_c], v [B,P,C] -> [B,P,C] (DCA step 5)."""
    heads = op.Reshape(op.Constant(value_int=num_heads), [1])
    split = op.Concat([0, 0], heads, [-1], axis=0)
    qh = op.Transpose(op.Reshape(q, split), perm=[0, 2, 1, 3])  # (B, h, P, C_c/h)
    kh = op.Transpose(op.Reshape(k, split), perm=[0, 2, 3, 1])  # (B, h, C_c/h, P)
    vh = op.Transpose(op.Reshape(v, split), perm=[0, 2, 1, 3])  # (B, h, P, C/h)
    dk = op.Cast(op.Slice(op.Shape(qh), [3], [4]), to=FLOAT.dtype)
    scores = op.MatMul(qh, kh)  # (B, h, P, P)
    attn = op.Softmax(op.Div(scores, op.CastLike(op.Sqrt(dk), scores)), axis=-1)
    out = op.Transpose(op.MatMul(attn, vh), perm=[0, 2, 1, 3])  # (B, P, h, C/h)
    return op.Reshape(out, [0, 0, -1])
