"""Box masks are half-open, [x0, x1) x [y0, y1) over pixel centres (docs/architecture.md 3.2), in every implementation.

A box whose edges lie exactly on pixel centres tells a half-open test from a closed one: on a 4x4 map
the centres are 0.125, 0.375, 0.625, 0.875, all exact in binary.
"""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from triton_interpreter import require_triton

from dbunet.models import ops

H = W = 4
BOX = [0.125, 0.375, 0.625, 0.875]  # x0 on column 0's centre, y0 on row 1's, x1 on column 2's, y1 on row 3's
EXPECTED = np.zeros((H, W), dtype=bool)
EXPECTED[1:3, 0:2] = True  # rows 1-2, columns 0-1: the far edges' own pixels (column 2, row 3) are outside


def _inputs():
    """x = 0 and q = k = 0, so every visible token gets the same weight; the box token's value is 1 and the
    null token's 0: the output is 1/2 where the box is visible and 0 elsewhere (gate 1)."""
    x = np.zeros((1, 1, H, W), np.float32)
    q, k = np.zeros((1, H * W, 1), np.float32), np.zeros((1, 2, 1), np.float32)
    v = np.array([[[0.0], [1.0]]], np.float32)
    return x, q, k, v, np.array([[BOX]], np.float32), np.ones((1, 1), np.float32), np.array(1.0, np.float32)


def _mask(out: np.ndarray) -> np.ndarray:
    out = out.reshape(H, W)
    assert set(np.round(out, 6).ravel()) <= {0.0, 0.5}, out
    return out > 0.25


def test_reference_masks_are_half_open():
    got = ops.box_masks(torch.tensor([[BOX]]), torch.ones(1, 1), H, W).reshape(H, W).numpy()
    np.testing.assert_array_equal(got, EXPECTED)
    out = ops.box_constraint_reference(*(torch.from_numpy(a) for a in _inputs()))
    np.testing.assert_array_equal(_mask(out.numpy()), EXPECTED)


def test_onnx_function_masks_are_half_open():
    from dbunet.export.onnx_export import attach_functions

    names = ["x", "q", "k", "v", "boxes", "valid", "gate"]
    arrays = _inputs()
    graph = helper.make_graph(
        [helper.make_node("BoxConstraint", names, ["out"], domain="dbunet")], "box",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape) for n, a in zip(names, arrays, strict=True)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, (1, 1, H, W))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    attach_functions(model, 18)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, dict(zip(names, arrays, strict=True)))
    np.testing.assert_array_equal(_mask(out), EXPECTED)


def test_triton_kernel_masks_are_half_open():
    require_triton()
    from dbunet.plugins import launch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: TRITON_INTERPRET=1 (conftest)
    out = launch.box_constraint(*(torch.from_numpy(a).to(device) for a in _inputs()))
    np.testing.assert_array_equal(_mask(out.cpu().numpy()), EXPECTED)
