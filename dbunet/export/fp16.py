"""FP16 copies with ONNX Runtime's float16 converter; graph inputs and outputs stay float32.

Needs onnx and onnxruntime only (not torch or onnxscript, which the export needs), so FP16 copies can be made
where only the runtime's packages are installed; the GPU check makes its own there."""

from __future__ import annotations

import onnx

from dbunet.export.proto_size import TWO_GB, approx_size

# First try: the converter's defaults. Second: also keep the ops that overflow first in float16
# (attention logits and normalisation statistics) in float32.
SAFER_BLOCK_LIST = ["Softmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization", "ReduceMean", "Pow"]


def to_fp16(model: onnx.ModelProto, op_block_list: list[str] | None = None) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = list(DEFAULT_OP_BLOCK_LIST) + list(op_block_list or [])
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
    _sort_topologically(converted.graph)
    return converted


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder the nodes so each comes after the nodes whose outputs it reads (its subgraphs' reads of outer
    names included); nodes already in order keep it."""
    nodes = list(graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    needs = [sorted({producer[name] for name in _reads(node) if name in producer} - {i})
             for i, node in enumerate(nodes)]
    order: list[int] = []
    state = [0] * len(nodes)  # 0 new, 1 on the path, 2 placed
    for root in range(len(nodes)):
        stack = [(root, 0)]
        while stack:  # depth first without recursion: chains of thousands of nodes
            i, next_dep = stack.pop()
            if next_dep == 0:
                if state[i] == 2:
                    continue
                if state[i] == 1:
                    raise ValueError(f"the graph has a cycle through node {nodes[i].name or i}")
                state[i] = 1
            if next_dep < len(needs[i]):
                stack.append((i, next_dep + 1))
                if state[needs[i][next_dep]] != 2:
                    stack.append((needs[i][next_dep], 0))
                continue
            state[i] = 2
            order.append(i)
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def _reads(node: onnx.NodeProto) -> set[str]:
    """The names a node reads: its inputs, and what its subgraphs read from outside themselves."""
    names = {name for name in node.input if name}
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            inner = {name for n in sub.node for name in n.output} | {t.name for t in sub.initializer}
            inner |= {v.name for v in sub.input}
            names |= {name for n in sub.node for name in _reads(n)} - inner
    return names


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
