"""DualCrossAttention against a direct, loop-level re-computation of docs/architecture.md 3.2 in float64."""

import math

import pytest
import torch

from dbunet.models import ops
from dbunet.models.dual_cross_attention import DualCrossAttention


# -- the spec's equations, written out per sample with no code shared with the module -----------
def layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def softmax(x, dim):
    e = torch.exp(x - x.max(dim=dim, keepdim=True).values)
    return e / e.sum(dim=dim, keepdim=True)


def ds_conv(tokens, grid, m):
    """Depthwise 3x3 (zero padding) then pointwise, by explicit sums over the token grid."""
    Hp, Wp = grid
    C = tokens.shape[1]
    x = tokens.T.reshape(C, Hp, Wp)
    padded = torch.zeros(C, Hp + 2, Wp + 2, dtype=x.dtype)
    padded[:, 1:-1, 1:-1] = x
    dw = m.depthwise.weight[:, 0]  # (C, 3, 3)
    y = torch.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            y += dw[:, dy, dx, None, None] * padded[:, dy : dy + Hp, dx : dx + Wp]
    y += m.depthwise.bias[:, None, None]
    out = torch.einsum("oc,chw->ohw", m.pointwise.weight[:, :, 0, 0], y) + m.pointwise.bias[:, None, None]
    return out.reshape(out.shape[0], -1).T  # (P, C_out)


def multi_head(q, k, v, heads):
    outs = []
    for h in range(heads):
        sl_qk = slice(h * q.shape[1] // heads, (h + 1) * q.shape[1] // heads)
        sl_v = slice(h * v.shape[1] // heads, (h + 1) * v.shape[1] // heads)
        qh, kh = q[:, sl_qk], k[:, sl_qk]
        outs.append(softmax(qh @ kh.T / math.sqrt(qh.shape[1]), dim=1) @ v[:, sl_v])
    return torch.cat(outs, dim=1)


def linear(x, lin):
    y = x @ lin.weight.T
    return y if lin.bias is None else y + lin.bias


def reference_dca(m: DualCrossAttention, f, text):
    B, C, H, W = f.shape
    k = m.pool
    Hp, Wp = -(-H // k), -(-W // k)
    out = torch.empty_like(f)
    for b in range(B):
        # step 1: average over each k x k cell (a ragged edge cell averages what it covers)
        grid = torch.empty(C, Hp, Wp, dtype=f.dtype)
        for i in range(Hp):
            for j in range(Wp):
                grid[:, i, j] = f[b, :, i * k : (i + 1) * k, j * k : (j + 1) * k].mean(dim=(1, 2))
        tok = grid.reshape(C, -1).T  # (P, C)
        # step 2: text aligned to the tokens by cross-attention
        txt = linear(text[b], m.text_proj)
        ta = m.text_attn
        n0 = layer_norm(tok, m.norm_tokens)
        heads = multi_head(linear(n0, ta.to_q), linear(txt, ta.to_k), linear(txt, ta.to_v), m.heads)
        t_txt = linear(heads, ta.to_out[0])
        # steps 3-4: T_c and the channel attention: (softmax(Q^T K / sqrt(C_c)) V^T)^T
        t_c = torch.cat([n0, t_txt], dim=1)
        Q, K, V = ds_conv(n0, (Hp, Wp), m.cca_q), ds_conv(t_c, (Hp, Wp), m.cca_k), ds_conv(t_c, (Hp, Wp), m.cca_v)
        cca = (softmax(Q.T @ K / math.sqrt(2 * C), dim=1) @ V.T).T
        tok = tok + ds_conv(cca, (Hp, Wp), m.cca_out)
        # step 5: spatial attention with T_c' from the updated tokens
        n1 = layer_norm(tok, m.norm_tokens)
        t_c2 = layer_norm(torch.cat([n1, t_txt], dim=1), m.norm_concat)
        Qs, Ks = ds_conv(t_c2, (Hp, Wp), m.sca_q), ds_conv(t_c2, (Hp, Wp), m.sca_k)
        Vs = ds_conv(layer_norm(tok, m.norm_values), (Hp, Wp), m.sca_v)
        tok = tok + linear(multi_head(Qs, Ks, Vs, m.heads), m.sca_out)
        # step 6: nearest upsample by k, 1x1 conv, residual
        grid = tok.T.reshape(C, Hp, Wp)
        up = grid.repeat_interleave(k, 1).repeat_interleave(k, 2)[:, :H, :W]
        proj = torch.einsum("oc,chw->ohw", m.proj_out.weight[:, :, 0, 0], up) + m.proj_out.bias[:, None, None]
        out[b] = f[b] + proj
    return out


@pytest.mark.parametrize(
    "C,H,W,pool,heads",
    [(8, 4, 4, 1, 2), (8, 5, 7, 1, 4), (16, 6, 6, 2, 2), (8, 7, 5, 2, 2), (8, 9, 10, 4, 1)],
)
@torch.no_grad()
def test_matches_spec_equations_float64(C, H, W, pool, heads):
    torch.manual_seed(C + H + W + pool)
    m = DualCrossAttention(C, text_dim=12, heads=heads, pool=pool).double()
    for p in m.parameters():  # spread the weights so every term matters
        p.copy_(torch.randn_like(p) * 0.3)
    f = torch.randn(2, C, H, W, dtype=torch.float64)
    text = torch.randn(2, 5, 12, dtype=torch.float64)
    got, want = m(f, text), reference_dca(m, f, text)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_custom_op_cores_against_einsum():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 10, c, dtype=torch.float64) for c in (4, 8, 8))
    attn = torch.softmax(torch.einsum("bpc,bpd->bcd", q, k) / math.sqrt(8), dim=-1)
    torch.testing.assert_close(ops.channel_cross_attention(q, k, v), torch.einsum("bcd,bpd->bpc", attn, v))
    qs, ks, vs = torch.randn(2, 10, 8, dtype=torch.float64), torch.randn(2, 10, 8, dtype=torch.float64), q
    got = ops.spatial_cross_attention(qs, ks, vs, 2)
    want = torch.cat(
        [torch.softmax(qs[..., h * 4 : h * 4 + 4] @ ks[..., h * 4 : h * 4 + 4].transpose(1, 2) / 2.0, -1)
         @ vs[..., h * 2 : h * 2 + 2]
         for h in range(2)], dim=-1)
    torch.testing.assert_close(got, want)


def test_ops_pass_torch_library_checks():
    from torch.library import opcheck

    q, k = torch.randn(2, 9, 4), torch.randn(2, 9, 8)
    for op, args in ((ops.channel_cross_attention, (q, k, k)), (ops.spatial_cross_attention, (k, k, q, 2))):
        result = opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_ops_are_differentiable():
    q = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.channel_cross_attention(a, b, b), (q, k))
    assert torch.autograd.gradcheck(lambda a, b: ops.spatial_cross_attention(b, b, a, 2), (q, k))
