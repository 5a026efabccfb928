"""Writing graphs: external data past 2 GB, atomic replacement, loud parity failures."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from dbunet.errors import AccuracyError
from dbunet.export import onnx_export, parity
from dbunet.export.exporter import ExportOptions, export


def _matmul_model(n=64):
    w = helper.make_tensor("w", onnx.TensorProto.FLOAT, [n, n], np.eye(n, dtype=np.float32).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", n])], [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_large_models_keep_weights_in_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "TWO_GB", 1000)  # stand-in threshold: the same code path as > 2 GB
    model = _matmul_model()
    files = onnx_export.save_onnx(model, tmp_path / "m.onnx")
    assert model.graph.initializer[0].raw_data  # the caller's model keeps its weights in memory
    assert [f.name for f in files] == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < 1000 < (tmp_path / "m.onnx.data").stat().st_size
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    y = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(x, y)
    # a later small model replaces both files and leaves no stale data or temp files behind
    monkeypatch.setattr(onnx_export, "TWO_GB", 2**31 - 1)
    assert onnx_export.save_onnx(_matmul_model(), tmp_path / "m.onnx") == [tmp_path / "m.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_parity_beyond_tolerance_fails_the_export(tmp_path, monkeypatch):
    monkeypatch.setitem(parity.TOLERANCE, "fp32", 1e-12)  # no real graph meets this
    with pytest.raises(AccuracyError, match="gae .* FAIL"):
        export(ExportOptions(out=tmp_path, components=("gae",)), report=lambda line: None)
    assert not (tmp_path / "manifest.json").exists()  # an incomplete directory is never marked complete
