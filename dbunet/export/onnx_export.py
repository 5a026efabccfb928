"""torch -> ONNX for one component: trace, custom-domain nodes with local functions, clean-up, checks.

The TorchScript-based exporter traces each component in seconds on a CPU (the dynamo exporter
takes over a minute for the tiny DB-UNet alone). Each custom op becomes one `dbunet::<Name>`
node; its decomposition (dbunet.export.onnx_functions) is attached as a model-local function.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from dbunet.errors import ExportError
from dbunet.export import onnx_functions
from dbunet.export.options import SUPPORTED_OPSETS
from dbunet.export.proto_size import TWO_GB, approx_size
from dbunet.iospec import GraphSpec
from dbunet.releases import require

log = logging.getLogger(__name__)

PLUGIN_NAMESPACE_ATTR = "plugin_namespace"
FUNCTIONS = {
    "BoxConstraint": onnx_functions.BoxConstraint,
    "ChannelCrossAttention": onnx_functions.ChannelCrossAttention,
    "SpatialCrossAttention": onnx_functions.SpatialCrossAttention,
}

_registered: set[int] = set()


def _register_symbolics(opset: int) -> None:
    """Map each torch custom op onto its single custom-domain ONNX node."""
    if opset in _registered:
        return
    from torch.onnx import symbolic_helper

    def box(g, x, q, k, v, boxes, valid, gate):
        return g.op("dbunet::BoxConstraint", x, q, k, v, boxes, valid, gate).setType(x.type())

    def cca(g, q, k, v):
        return g.op("dbunet::ChannelCrossAttention", q, k, v).setType(q.type())

    def sca(g, q, k, v, num_heads):
        heads = symbolic_helper._maybe_get_const(num_heads, "i")
        return g.op("dbunet::SpatialCrossAttention", q, k, v, num_heads_i=heads).setType(v.type())

    for name, fn in (("box_constraint", box), ("channel_cross_attention", cca), ("spatial_cross_attention", sca)):
        torch.onnx.register_custom_op_symbolic(f"dbunet::{name}", fn, opset)
    _registered.add(opset)


def attach_functions(model: onnx.ModelProto, opset: int) -> None:
    """Add the local function of every dbunet-domain op the graph uses, and the domain's opset import."""
    used = {n.op_type for n in model.graph.node if n.domain == onnx_functions.DOMAIN}
    unknown = used - set(FUNCTIONS)
    if unknown:
        raise ExportError(f"graph uses dbunet ops without a decomposition: {sorted(unknown)}")
    for name in sorted(used):
        proto = FUNCTIONS[name].to_function_proto()
        for imp in proto.opset_import:
            if imp.domain == "":
                imp.version = opset  # the bodies use only ops unchanged across opsets 18-20
        proto.attribute.append(PLUGIN_NAMESPACE_ATTR)  # declared, unused by the body: it is for TensorRT
        model.functions.append(proto)
    for node in model.graph.node:
        if node.domain == onnx_functions.DOMAIN:
            # TensorRT's parser looks a plugin up by (op_type, plugin_version, plugin_namespace)
            node.attribute.append(onnx.helper.make_attribute(PLUGIN_NAMESPACE_ATTR, onnx_functions.DOMAIN))
    if used and not any(i.domain == onnx_functions.DOMAIN for i in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(onnx_functions.DOMAIN, onnx_functions.DOMAIN_VERSION))


def decompose(model: onnx.ModelProto) -> onnx.ModelProto:
    """The plain standard-op graph: every local function inlined, the custom domain gone (weights over
    2 GB included: see dbunet.onnx_inline). The argument is consumed."""
    from dbunet.onnx_inline import inline_functions

    return inline_functions(model, onnx_functions.DOMAIN)


def apply_declared_dims(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Name every graph input/output dim as declared, and fail where the graph contradicts the spec.

    The exporter names the dims it could not prove (e.g. 'LayerNormalization..._dim_1' for the
    77 text tokens); the declaration is the contract, so those take the declared name or size.
    A fixed size that differs, a wrong dtype, rank or tensor name is an error.
    """
    problems = []
    declared = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    values = list(model.graph.input) + list(model.graph.output)
    if {v.name for v in values} != set(declared):
        problems.append(f"graph tensors {sorted(v.name for v in values)} != declared {sorted(declared)}")
    for v in values:
        want = declared.get(v.name)
        if want is None:
            continue
        dims = v.type.tensor_type.shape.dim
        if len(dims) != len(want.dims):
            problems.append(f"{v.name}: rank {len(dims)}, declared {want.dims}")
            continue
        for axis, (d, w) in enumerate(zip(dims, want.dims, strict=True)):
            if isinstance(w, str):
                d.dim_param = w
            elif d.HasField("dim_value") and d.dim_value != w:
                problems.append(f"{v.name}: axis {axis} is {d.dim_value}, declared {w}")
            else:
                d.dim_value = w
        dtype = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
        if dtype != want.dtype:
            problems.append(f"{v.name}: dtype {dtype}, declared {want.dtype}")
    if problems:
        raise ExportError(f"{spec.component}: exported graph does not match its spec: " + "; ".join(problems))


def graph_dims(model: onnx.ModelProto) -> dict[str, tuple]:
    """{tensor: dims} of the graph's inputs and outputs (dim names for symbolic axes)."""
    return {
        v.name: tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in (*model.graph.input, *model.graph.output)
    }


def trace_to_onnx(module: nn.Module, spec: GraphSpec, args: tuple[torch.Tensor, ...], opset: int,
                  decomposed: bool = False) -> onnx.ModelProto:
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(f"opset {opset} not supported; valid: {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}")
    _register_symbolics(opset)
    with tempfile.TemporaryDirectory(prefix="dbunet-export-") as tmp:
        raw = Path(tmp) / f"{spec.component}.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            try:
                torch.onnx.export(
                    module.eval(), args, str(raw), dynamo=False, opset_version=opset,
                    input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                    dynamic_axes=spec.dynamic_axes(), do_constant_folding=True,
                )
            except Exception as exc:
                raise ExportError(f"{spec.component}: tracing to ONNX failed: {exc}") from exc
        model = onnx.load(str(raw))  # with any external data, into memory
    attach_functions(model, opset)
    apply_declared_dims(model, spec)
    model = cleanup(model)
    if decomposed:
        model = decompose(model)
    if graph_dims(model) != {t.name: t.dims for t in (*spec.inputs, *spec.outputs)}:
        raise ExportError(f"{spec.component}: clean-up changed the graph's dims: {graph_dims(model)}")
    return model


def require_optimizer() -> None:
    """onnxscript recent enough for cleanup(): checked before an export traces anything."""
    require("onnxscript", ExportError, "the export's graph clean-up", "export")


# The rewrites of onnxscript's default set that simplify these graphs (measured on the tiny, shapes, SD 1.x and
# SDXL exports: division by 1 in the VAEs, Unsqueeze chains in the UNets, the text encoder's Flatten and
# reshape shape), and the other single-node no-ops. Not the whole default set: its Slice-pair-to-Split rule
# matches a two-node pattern by trying node pairs, quadratic in the graph's size, and never fires here: 11 of
# the 15 s the tiny UNet's clean-up took; the sd15 UNet's took 30 to 46 s, 7 to 8 s without it (2-core CPU).
# Names a release lacks are left out (materialize_reshape_shape_rule came after onnxscript 0.6).
SIMPLIFICATIONS = (
    "add_0_rule", "sub_0_rule", "mul_by_1_rule", "div_by_1_rule", "no_op_cast_rule", "no_op_expand_rule",
    "no_op_transpose_rule", "cast_cast_rule", "transpose_transpose_rule", "reshape_reshape_rule",
    "unsqueeze_unsqueeze_rule", "flatten_to_reshape_rule", "collapse_slice_rule", "collapse_slice2_rule",
    "materialize_reshape_shape_rule",
)


def simplification_rules() -> list:
    from onnxscript.rewriter.rules import common

    return [getattr(common, name) for name in SIMPLIFICATIONS if hasattr(common, name)]


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, the simplifications above, dead-node removal and shape inference (onnxscript's
    optimizer passes, one round: it reaches the fixed point on these graphs), functions kept.

    Works on the in-memory IR, so graphs over protobuf's 2 GB limit are never serialized whole;
    ONNX shape inference (which serializes) is skipped for those.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as passes
    import onnxscript.optimizer
    import onnxscript.rewriter

    require_optimizer()
    large = approx_size(model) > TWO_GB
    ir_model = ir.from_proto(model)
    onnxscript.optimizer.fold_constants(ir_model, onnx_shape_inference=not large)
    ir.passes.Sequential(
        onnxscript.rewriter.RewritePass(simplification_rules()),
        passes.RemoveUnusedNodesPass(), passes.RemoveUnusedFunctionsPass(), passes.RemoveUnusedOpsetsPass(),
        passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        passes.LiftSubgraphInitializersToMainGraphPass(), passes.DeduplicateInitializersPass(),
        passes.CommonSubexpressionEliminationPass(), passes.OutputFixPass(), passes.NameFixPass(),
    )(ir_model)
    return ir.to_proto(ir_model)


def save_onnx(model: onnx.ModelProto, path: str | Path) -> list[Path]:
    """Write atomically; a model over 2 GB keeps its weights in `<name>.data` beside it. Returns the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = approx_size(model) > TWO_GB
    with tempfile.TemporaryDirectory(prefix=".tmp-", dir=path.parent) as tmp:
        tmp_model = Path(tmp) / path.name
        data_name = path.name + ".data"
        if external:
            # save_model moves the tensors of the proto it is given out to the data file: give it a
            # copy, so the caller's model (e.g. the source of the FP16 copy) keeps its weights
            detached = onnx.ModelProto()
            detached.CopyFrom(model)
            onnx.save_model(detached, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            del detached
        else:
            onnx.save_model(model, str(tmp_model))
        files = []
        external = external and (Path(tmp) / data_name).is_file()
        if external:  # data first: the .onnx that points at it appears last
            os.chmod(Path(tmp) / data_name, 0o644)
            os.replace(Path(tmp) / data_name, path.parent / data_name)
            files.append(path.parent / data_name)
        else:
            with contextlib.suppress(FileNotFoundError):
                (path.parent / data_name).unlink()
        os.chmod(tmp_model, 0o644)
        os.replace(tmp_model, path)
        files.insert(0, path)
    return files


def check_model_file(path: str | Path) -> None:
    """onnx.checker with full_check (shape inference through the local functions)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path}: ONNX checker failed: {exc}") from None
