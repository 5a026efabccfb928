"""FP16 copies with ONNX Runtime's float16 converter; graph inputs and outputs stay float32."""

from __future__ import annotations

import onnx

from dbunet.export.onnx_export import TWO_GB, approx_size

# First try: the converter's defaults. Second: also keep the ops that overflow first in float16
# (attention logits and normalisation statistics) in float32.
SAFER_BLOCK_LIST = ["Softmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "ReduceMean", "Pow"]


def to_fp16(model: onnx.ModelProto, op_block_list: list[str] | None = None) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = list(DEFAULT_OP_BLOCK_LIST) + list(op_block_list or [])
    import onnx_ir as ir

    # keep_io_types: callers feed float32 whatever the precision; the casts sit inside the graph
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # the converter edits its argument in place
    _unshare_float_only_initializers(copy.graph)
    # shape inference serializes the model: impossible past protobuf's 2 GB (the converter then warns)
    large = approx_size(copy) > TWO_GB
    converted = convert_float_to_float16(copy, keep_io_types=True, op_block_list=blocked, disable_shape_infer=large)
    # its value_info can contradict the casts it inserted: drop it (shape inference rebuilds it)
    del converted.graph.value_info[:]
    # the converter appends its input casts at the end of the node list; restore topological order
    graph = ir.from_proto(converted)
    graph.graph.sort()
    return ir.to_proto(graph)


def _unshare_float_only_initializers(graph: onnx.GraphProto) -> None:
    """Give each consumer of a float-only input (e.g. every Resize's scales) its own initializer.

    The converter casts such an input back to float32 next to its consumer; when several consumers
    share one initializer it emits clashing casts of the same name. Copies keep them apart.
    """
    from onnxruntime.transformers.float16 import ALWAYS_FLOAT_INPUTS

    inits = {t.name: t for t in graph.initializer}
    seen: set[str] = set()
    for node in graph.node:
        for slot in ALWAYS_FLOAT_INPUTS.get(node.op_type, []):
            if slot >= len(node.input) or node.input[slot] not in inits:
                continue
            name = node.input[slot]
            if name in seen:
                clone = onnx.TensorProto()
                clone.CopyFrom(inits[name])
                clone.name = f"{name}__{node.name or len(seen)}"
                graph.initializer.append(clone)
                node.input[slot] = clone.name
            seen.add(name)
