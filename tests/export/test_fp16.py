"""dbunet.export.fp16: the FP16 copy is a valid graph in topological order, and its sort keeps what is in order."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dbunet.export.fp16 import _sort_topologically, to_fp16


def _chain_graph(order: list[int]) -> onnx.GraphProto:
    """x -> Relu(n0) -> Neg(n1) -> Abs(n2) -> y, with the nodes listed in `order`."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n0"), helper.make_node("Neg", ["a"], ["b"], name="n1"),
             helper.make_node("Abs", ["b"], ["y"], name="n2")]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    return helper.make_graph([nodes[i] for i in order], "chain", [io[0]], [io[1]])


@pytest.mark.parametrize("order", [[2, 0, 1], [1, 2, 0], [2, 1, 0]])
def test_a_shuffled_chain_is_put_back_in_order(order):
    graph = _chain_graph(order)
    _sort_topologically(graph)
    assert [n.name for n in graph.node] == ["n0", "n1", "n2"]


def test_independent_nodes_keep_their_order_and_a_late_producer_moves_up():
    # two independent branches listed b-first, then a cast appended last that the first node reads
    nodes = [helper.make_node("Relu", ["xc"], ["p"], name="reads_cast"),
             helper.make_node("Neg", ["x"], ["q"], name="independent"),
             helper.make_node("Identity", ["x"], ["xc"], name="cast_appended_last")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("p", "q")])
    _sort_topologically(graph)
    assert [n.name for n in graph.node] == ["cast_appended_last", "reads_cast", "independent"]


def test_a_subgraph_reading_an_outer_name_comes_after_its_producer():
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])
    branch = helper.make_graph([helper.make_node("Identity", ["late"], ["o"])], "branch", [], [out])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=branch, else_branch=branch),
             helper.make_node("Neg", ["x"], ["late"], name="late_producer")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    _sort_topologically(graph)
    assert [n.name for n in graph.node] == ["late_producer", "if"]


def test_a_cycle_is_refused():
    nodes = [helper.make_node("Neg", ["b"], ["a"], name="n0"), helper.make_node("Neg", ["a"], ["b"], name="n1")]
    graph = helper.make_graph(nodes, "g", [], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])])
    with pytest.raises(ValueError, match="cycle"):
        _sort_topologically(graph)


def test_the_fp16_copy_is_a_checked_graph_that_runs_close_to_fp32():
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], rng.standard_normal(64).astype(np.float32).tolist())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["s"], axis=-1),
             helper.make_node("Mul", ["s", "x"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)  # ORT 1.31 reads <= 13
    half = to_fp16(model)
    onnx.checker.check_model(half, full_check=True)  # refuses a node that reads a name defined after it
    assert any(t.data_type == TensorProto.FLOAT16 for t in half.graph.initializer)
    assert [i.type.tensor_type.elem_type for i in half.graph.input] == [TensorProto.FLOAT]  # IO stays float32
    x = rng.standard_normal((2, 8)).astype(np.float32)
    want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
                 for m in (model, half))
    # FP16 weights and activations: about 3 significant digits, the softmax's inputs up to ~10
    np.testing.assert_allclose(got, want, atol=1e-2, rtol=1e-2)
