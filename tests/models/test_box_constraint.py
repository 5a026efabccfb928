"""BoxConstraint: masks against hand-built ones, locality, padding, edge cases (docs/architecture.md 3.2)."""

import pytest
import torch

from dbunet.models import ops
from dbunet.models.box_constraint import BoxConstraint


def test_masks_match_hand_built():
    # 4 rows x 6 columns: pixel centres at x = (0.5..5.5)/6, y = (0.5..3.5)/4
    boxes = torch.tensor(
        [[
            [0.0, 0.0, 0.5, 0.5],  # top-left quarter: columns 0-2, rows 0-1
            [-0.2, 0.5, 0.4, 1.7],  # partly outside [0,1]: clipped to columns 0-1, rows 2-3
            [0.6, 0.1, 0.6, 0.9],  # empty (x1 == x0): nothing
            [0.7, 0.2, 0.3, 0.9],  # inverted (x1 < x0): nothing
            [0.0, 0.0, 1.0, 1.0],  # whole image, but a padding slot: nothing
            [0.5, 0.3, 1.0, 0.4],  # a band between centres 0.375 (row 1) and 0.625 (row 2): row 1, columns 3-5
        ]]
    )
    valid = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    expected = torch.zeros(1, 6, 4, 6, dtype=torch.bool)
    expected[0, 0, 0:2, 0:3] = True
    expected[0, 1, 2:4, 0:2] = True
    expected[0, 5, 1, 3:6] = True
    got = ops.box_masks(boxes, valid, 4, 6).reshape(1, 6, 4, 6)
    assert torch.equal(got, expected)


def _module(C=8, D=12, seed=0):
    torch.manual_seed(seed)
    m = BoxConstraint(C, D, hidden=16, num_freqs=8, gate_init=1.0).double().eval()
    return m


def _inputs(B=1, C=8, H=8, W=8, N=2, D=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    phrases = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    return x, phrases


@torch.no_grad()
def test_pixels_outside_a_box_ignore_its_phrase_and_coordinates():
    m = _module()
    x, phrases = _inputs()
    one = torch.ones(())
    box_a = [0.0, 0.0, 0.5, 0.5]  # top-left 4x4
    box_b = [0.5, 0.5, 1.0, 1.0]  # bottom-right 4x4
    base = m(x, torch.tensor([[box_a, box_b]]), phrases, torch.ones(1, 2), one)

    # change box B's phrase and move it within the bottom half: pixels of the top half must not move
    phrases2 = phrases.clone()
    phrases2[0, 1] = torch.randn(12, dtype=torch.float64)
    moved = m(x, torch.tensor([[box_a, [0.25, 0.5, 0.75, 1.0]]]), phrases2, torch.ones(1, 2), one)
    top = (slice(None), slice(None), slice(0, 4), slice(None))
    torch.testing.assert_close(moved[top], base[top], rtol=0, atol=0)
    # ...and the test can fail: pixels that box B covers did change
    assert (moved[..., 4:, :] - base[..., 4:, :]).abs().max() > 1e-3

    # pixels outside every box see only the null token: the same output for any boxes elsewhere
    outside = (slice(None), slice(None), slice(0, 4), slice(4, 8))  # top-right, covered by neither
    other = m(x, torch.tensor([[[0.0, 0.6, 0.3, 0.9], [0.1, 0.5, 0.4, 1.0]]]), phrases2.flip(1), torch.ones(1, 2), one)
    torch.testing.assert_close(other[outside], base[outside], rtol=0, atol=0)


@torch.no_grad()
def test_padding_slots_change_nothing():
    m = _module()
    x, phrases = _inputs(N=2)
    boxes = torch.tensor([[[0.1, 0.1, 0.6, 0.7], [0.3, 0.2, 0.9, 0.8]]], dtype=torch.float64)
    base = m(x, boxes, phrases, torch.ones(1, 2), torch.ones(()))
    pad = 28  # up to N = 30 slots, filled with garbage that validity 0 must hide
    boxes_p = torch.cat([boxes, torch.rand(1, pad, 4, dtype=torch.float64)], 1)
    phrases_p = torch.cat([phrases, torch.randn(1, pad, 12, dtype=torch.float64)], 1)
    valid_p = torch.cat([torch.ones(1, 2), torch.zeros(1, pad)], 1)
    padded = m(x, boxes_p, phrases_p, valid_p, torch.ones(()))
    torch.testing.assert_close(padded, base, rtol=1e-12, atol=1e-12)


@torch.no_grad()
def test_gate_zero_or_box_scale_zero_is_identity():
    x, phrases = _inputs()
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.8, 0.8]]], dtype=torch.float64)
    m = _module()
    torch.testing.assert_close(m(x, boxes, phrases, torch.ones(1, 2), torch.zeros(())), x, rtol=0, atol=0)
    assert (m(x, boxes, phrases, torch.ones(1, 2), torch.ones(())) - x).abs().max() > 1e-3
    m.gamma.zero_()  # GLIGEN's initialisation: no effect until trained
    torch.testing.assert_close(m(x, boxes, phrases, torch.ones(1, 2), torch.ones(())), x, rtol=0, atol=0)


@pytest.mark.parametrize("N", [0, 1, 30])
@pytest.mark.parametrize("H,W", [(1, 1), (7, 5), (16, 9)])
@torch.no_grad()
def test_shapes_and_finiteness(N, H, W):
    m = _module().float()
    x = torch.randn(2, 8, H, W)
    boxes = torch.rand(2, N, 4)
    boxes[..., 2:] += boxes[..., :2]  # some extend past 1, some are ordinary
    out = m(x, boxes, torch.randn(2, N, 12), (torch.rand(2, N) > 0.3).float(), torch.ones(()))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_op_checks_and_gradients():
    from torch.library import opcheck

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(1, 15, 6, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[[0.0, 0.0, 0.6, 0.6], [0.3, 0.3, 1.0, 1.0]]], dtype=torch.float64)
    valid = torch.ones(1, 2, dtype=torch.float64)
    gate = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    result = opcheck(ops.box_constraint, (x, q, k, v, boxes, valid, gate))
    assert all(r == "SUCCESS" for r in result.values()), result
    assert torch.autograd.gradcheck(lambda *a: ops.box_constraint(*a[:4], boxes, valid, a[4]), (x, q, k, v, gate))
