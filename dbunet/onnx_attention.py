"""Attention in linear memory on ONNX Runtime (docs/architecture.md 5.1).

As exported, every attention materialises its P x P score matrix under ONNX Runtime: the DB-UNet's
SpatialCrossAttention function once inlined, and a plain UNet's or VAE's attention as the MatMul -> Softmax ->
MatMul that PyTorch's exporter writes. ONNX Runtime's contrib `com.microsoft.MultiHeadAttention` computes the
same attention with a flash kernel on the CPU (and fused kernels on CUDA) whose memory is linear in P. This module
rewrites a graph's attentions into that node when the ONNX Runtime backend loads it; the artifacts on disk keep
the portable definition (the other backends read it: OpenVINO and TensorRT fuse attention themselves).

Only the attention core is replaced: the projections and every initializer stay, so a graph's external data
is read from where it lies. No mask or bias input is ever given (either disables the flash path), so an
attention with a mask (a text encoder's causal one) is left as it is. Two forms are recognised:

  custom   dbunet::SpatialCrossAttention(q, k, v, num_heads): q, k [B,P,C_k], v [B,P,C_v], scale 1/sqrt(C_k/h),
           exactly MultiHeadAttention's definition (a v head size unlike q's is allowed)
  pattern  Softmax(MatMul(q4 * s, k4t * s)) @ v4, where q4, v4 = Transpose(Reshape(x3, [B, S, h, d]), 0213),
           k4t = Transpose(Reshape(k3), 0231) and s = sqrt(1/sqrt(d)) (torch.onnx's scaled_dot_product_attention
           with its default scale), or constant scales
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MSFT = "com.microsoft"
# the session option that lets ONNX Runtime load a graph from memory and its external data from a folder
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
PERM_HEADS = [0, 2, 1, 3]  # [B, S, h, d] <-> [B, h, S, d]


@dataclass
class AttentionReport:
    """What a rewrite did to one graph: attentions replaced, by form, and those left as they were (with why)."""

    fused: dict[str, int] = field(default_factory=dict)  # form -> count
    left: list[str] = field(default_factory=list)  # "node: reason"

    @property
    def total(self) -> int:
        return sum(self.fused.values())


class _Graph:
    """Producer and consumer lookups over a GraphProto, and small constants read from it."""

    def __init__(self, graph) -> None:
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.initializers = {t.name: t for t in graph.initializer}

    def node(self, name: str, op: str):
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op and n.domain in ("", "ai.onnx") else None

    def constant(self, name: str) -> np.ndarray | None:
        """The value of a Constant node's output or of an initializer stored in the graph (not external data)."""
        from onnx import numpy_helper

        t = self.initializers.get(name)
        if t is not None:
            return None if t.data_location == 1 else numpy_helper.to_array(t)
        n = self.node(name, "Constant")
        if n is None:
            return None
        for a in n.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name in ("value_float", "value_int"):
                return np.array(a.f if a.name == "value_float" else a.i)
        return None


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _through_casts(g: _Graph, name: str) -> str:
    while (n := g.node(name, "Cast")) is not None:
        name = n.input[0]
    return name


def _split_scale(g: _Graph, name: str) -> tuple[str, str | None]:
    """x * s -> (x, s) where one side of a Mul is a scale (a constant or the exporter's sqrt chain)."""
    n = g.node(name, "Mul")
    if n is None:
        return name, None
    for x, s in ((n.input[0], n.input[1]), (n.input[1], n.input[0])):
        if g.constant(_through_casts(g, s)) is not None or g.node(_through_casts(g, s), "Sqrt") is not None:
            return x, s
    return name, None


def _is_default_scale(g: _Graph, s: str, q4: str) -> bool:
    """s = sqrt(1 / sqrt(last dim of q4)): torch.onnx's scale for scaled_dot_product_attention without `scale`."""
    sqrt = g.node(_through_casts(g, s), "Sqrt")
    div = sqrt and g.node(_through_casts(g, sqrt.input[0]), "Div")
    if not div:
        return False
    one = g.constant(_through_casts(g, div.input[0]))
    inner = g.node(_through_casts(g, div.input[1]), "Sqrt")
    dim = inner and g.node(_through_casts(g, inner.input[0]), "Slice")
    shape = dim and g.node(dim.input[0], "Shape")
    starts = dim and g.constant(dim.input[1])
    return (one is not None and one.size == 1 and float(one.reshape(-1)[0]) == 1.0 and shape is not None
            and starts is not None and int(np.asarray(starts).reshape(-1)[0]) == -1 and shape.input[0] == q4)


def _heads_input(g: _Graph, name: str, perm: list[int]) -> tuple[str, int] | None:
    """(x3, h) where `name` = Transpose(Reshape(x3, [B, S, h, d]), perm) and h is a constant."""
    t = g.node(name, "Transpose")
    r = t and list(_attr(t, "perm", [])) == perm and g.node(t.input[0], "Reshape")
    if not r:
        return None
    heads = _reshape_heads(g, r.input[1])
    return (r.input[0], heads) if heads else None


def _reshape_heads(g: _Graph, shape: str) -> int | None:
    value = g.constant(shape)
    if value is not None:
        return int(value[2]) if value.size == 4 and value[2] > 0 else None
    concat = g.node(shape, "Concat")
    if concat is None or len(concat.input) != 4:
        return None
    value = g.constant(concat.input[2])
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 and value.reshape(-1)[0] > 0 else None


def _key_input(g: _Graph, name: str) -> tuple[str, int] | None:
    """k3 from k4t = [B, h, d, L]: one Transpose 0231 of [B, L, h, d], or 0132 after the usual 0213."""
    direct = _heads_input(g, name, [0, 2, 3, 1])
    if direct:
        return direct
    t = g.node(name, "Transpose")
    if t is not None and list(_attr(t, "perm", [])) == [0, 1, 3, 2]:
        return _heads_input(g, t.input[0], PERM_HEADS)
    return None


@dataclass(frozen=True)
class _Match:
    q3: str
    k3: str
    v3: str
    heads: int
    scale: float | None  # None: MultiHeadAttention's default, 1/sqrt(head size)
    output: str  # the [B, h, S, d_v] tensor the pattern produced
    anchor: object  # the node whose place the replacement takes (the second MatMul)


def _match_pattern(g: _Graph, softmax) -> tuple[_Match | None, str]:
    axis = _attr(softmax, "axis", -1)
    if axis not in (-1, 3):
        return None, f"softmax over axis {axis}"
    scores = g.node(softmax.input[0], "MatMul")
    if scores is None:
        return None, "its scores are not a plain MatMul (a mask or bias is added)"
    users = g.consumers.get(softmax.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
        return None, "its weights feed something other than one MatMul"
    mix = users[0]
    q4, sq = _split_scale(g, scores.input[0])
    k4t, sk = _split_scale(g, scores.input[1])
    if sq is not None and sk is not None and _is_default_scale(g, sq, q4) and _is_default_scale(g, sk, q4):
        scale = None
    else:
        factors = [g.constant(_through_casts(g, s)) for s in (sq, sk) if s is not None]
        if any(f is None or f.size != 1 for f in factors):
            return None, "a scale that is neither constant nor the default"
        scale = float(np.prod([f.reshape(-1)[0] for f in factors])) if factors else 1.0
    q, k, v = _heads_input(g, q4, PERM_HEADS), _key_input(g, k4t), _heads_input(g, mix.input[1], PERM_HEADS)
    if not (q and k and v) or not q[1] == k[1] == v[1]:
        return None, "q, k and v are not split into heads by Reshape + Transpose with a constant head count"
    return _Match(q[0], k[0], v[0], q[1], scale, mix.output[0], mix), ""


def fuse_attention(model, rewrite: bool = True) -> AttentionReport:
    """Rewrite `model` (an onnx.ModelProto, its external data not loaded) in place: every attention it recognises
    becomes one com.microsoft.MultiHeadAttention node. Returns what it did (rewrite False: what it would do, and
    the model is left as it is)."""
    from onnx import TensorProto, helper

    graph = model.graph
    g = _Graph(graph)
    report = AttentionReport()
    replace: dict[int, list] = {}  # id(node) -> the nodes that take its place
    shapes = []  # the initializers they add
    for node in graph.node:
        if node.domain == "dbunet" and node.op_type == "SpatialCrossAttention":
            mha = helper.make_node("MultiHeadAttention", list(node.input[:3]), list(node.output), domain=MSFT,
                                   name=f"{node.name}/mha", num_heads=int(_attr(node, "num_heads")))
            replace[id(node)] = [mha]
            report.fused["custom"] = report.fused.get("custom", 0) + 1
        elif node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            match, why = _match_pattern(g, node)
            if match is None:
                report.left.append(f"{node.name}: {why}")
                continue
            name = node.name or match.output
            attrs = {"num_heads": match.heads} | ({} if match.scale is None else {"scale": match.scale})
            shape = helper.make_tensor(f"{name}/mha_heads_shape", TensorProto.INT64, [4], [0, 0, match.heads, -1])
            shapes.append(shape)
            replace[id(match.anchor)] = [
                helper.make_node("MultiHeadAttention", [match.q3, match.k3, match.v3], [f"{name}/mha"], domain=MSFT,
                                 name=f"{name}/mha", **attrs),
                helper.make_node("Reshape", [f"{name}/mha", shape.name], [f"{name}/mha_heads"],
                                 name=f"{name}/mha_heads"),
                helper.make_node("Transpose", [f"{name}/mha_heads"], [match.output], name=f"{name}/mha_bhsd",
                                 perm=PERM_HEADS),
            ]
            report.fused["pattern"] = report.fused.get("pattern", 0) + 1
    if not replace or not rewrite:
        return report
    graph.initializer.extend(shapes)
    nodes = [new for n in graph.node for new in replace.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(_live(nodes, {o.name for o in graph.output}))
    read = {i for n in graph.node for i in n.input}  # the removed nodes' constants go with them
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MSFT for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MSFT, 1))
    return report


def _live(nodes: list, outputs: set[str]) -> list:
    """The nodes something still reads (the replaced attentions' scores, softmax and head splits go)."""
    needed, kept = set(outputs), []
    for n in reversed(nodes):
        if any(o in needed for o in n.output):
            kept.append(n)
            needed.update(i for i in n.input if i)
    return kept[::-1]


def load_rewritten(path, options) -> tuple[bytes | None, AttentionReport | None]:
    """The graph at `path` with its attentions rewritten, serialised without its external data, and `options`
    (ONNX Runtime's SessionOptions) told to read that data from beside the file. (None, report) where nothing
    was rewritten, (None, None) where the file is no ONNX graph: then load the file itself (ONNX Runtime says why)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 -- any parse failure: the session's own error names it
        return None, None
    report = fuse_attention(model)
    if not report.total:
        return None, report
    options.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(Path(path).parent))
    return model.SerializeToString(), report
