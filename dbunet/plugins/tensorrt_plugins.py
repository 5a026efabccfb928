"""TensorRT plugins for the dbunet-domain ONNX nodes (TensorRT >= 10.7, `tensorrt.plugin`).

Registered under namespace "dbunet" with the ONNX nodes' op_type as name; exported nodes carry
`plugin_namespace="dbunet"`, so TensorRT's ONNX parser takes the plugin instead of the node's
local function whenever these are registered:

  dbunet::BoxConstraint          AOT: box_constraint_kernel (Triton -> PTX)
  dbunet::SpatialCrossAttention  AOT: spatial_attention_kernel (Triton -> PTX)

ChannelCrossAttention has no plugin on purpose: an AOT plugin launches one kernel, and CCA needs
a softmax over every channel pair between its two GEMMs (a grid-wide dependency); TensorRT runs its
local function (MatMul, Softmax, MatMul) with its own GEMM kernels instead.

AOT implementations return PTX plus launch parameters, so engines need no Python at run time
(C++ runtimes included). Written against the documented tensorrt.plugin API; see the README for
what could be executed where (TensorRT cannot be installed in this project's environments).

tensorrt.plugin validates the decorated functions when they are registered: it calls issubclass() on
every parameter annotation (so this module must not postpone annotations: no `from __future__ import
annotations`), requires the aot_impl return annotation Tuple[str | bytes, str | bytes,
KernelLaunchParams, SymIntExprs], accepts AutoTuneCombination or List[AutoTuneCombination] from
autotune, and checks each function's parameter names against (tensors..., attributes..., outputs[,
tactic]). tests/stand_ins/trt_plugin_stand_in.py enforces the same rules without TensorRT.
"""

import functools
from typing import Any, List, Tuple, Union

from dbunet.errors import BuildError

NAMESPACE = "dbunet"
PLUGINS = ("BoxConstraint", "SpatialCrossAttention")
_registered = False


def _tensorrt():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise BuildError(f"TensorRT plugins need tensorrt >= 10.7 with tensorrt.plugin ({exc})") from None
    return trt, trtp


def device_compute_capability() -> int:
    """The current CUDA device's compute capability as an int (e.g. 90), via cuda-python."""
    from dbunet.cuda_runtime import current_device

    return current_device().compute_capability


def _dtype_name(trt, desc) -> str:
    if desc.dtype == trt.float16:
        return "fp16"
    if desc.dtype == trt.float32:
        return "fp32"
    raise BuildError(f"dbunet plugins take fp16 or fp32 tensors, got {desc.dtype}")


def _constant(expr, what: str) -> int:
    """A dim the kernel is specialised on (channels, head sizes) must be a build-time constant."""
    if hasattr(expr, "is_constant") and not expr.is_constant:
        raise BuildError(f"{what} must be a build-time constant for the dbunet plugins "
                         "(dbunet-build makes the profile's fixed dims static in the graph)")
    return int(expr.constant_value() if hasattr(expr, "constant_value") else expr)


def box_constraint_launch(trtp, compiled, x, q, boxes) -> tuple[Any, Any]:
    """Grid over (pixel blocks, batch); scalars C, H, W, D, N as symbolic int32 (dynamic shapes)."""
    B, C, H, W = (x.shape_expr[i] for i in range(4))
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(H * W, compiled.constants["BLOCK_P"])
    launch.grid_y = B
    launch.block_x = compiled.num_warps * 32
    launch.shared_mem = compiled.shared_mem
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (C, H, W, q.shape_expr[2], boxes.shape_expr[1])])
    return launch, extra


def spatial_attention_launch(trtp, compiled, q, v, num_heads: int) -> tuple[Any, Any]:
    B, P, CQ = (q.shape_expr[i] for i in range(3))
    CV = v.shape_expr[2]
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(P, compiled.constants["BLOCK_M"])
    launch.grid_y = B * num_heads
    launch.block_x = compiled.num_warps * 32
    launch.shared_mem = compiled.shared_mem
    dk, dv = _constant(CQ, "C_c") // num_heads, _constant(CV, "C") // num_heads
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (P, CQ, CV, num_heads, dk, dv)])
    return launch, extra


@functools.lru_cache(maxsize=64)  # TensorRT calls aot_impl per node and tactic; most nodes share a shape
def plugin_kernel(kernel: str, dtype: str, cc: int, driver_cuda: str | None = None, **shape):
    """The PTX an AOT implementation returns: the kernel configuration for `shape`, at the ISA both a CUDA
    `driver_cuda` driver and this Triton's ptxas accept (None: Triton's newest), refused if that driver could
    not load it. The GPU check (tools/gpu_check.py) launches exactly this."""
    from dbunet.plugins.aot import compile_config, require_driver_reads, target_isa

    if driver_cuda:
        require_sound_driver(cc, driver_cuda)
    isa = target_isa(cc, driver_cuda) if driver_cuda else None
    compiled = compile_config(kernel, dtype, cc, isa, **shape)
    if driver_cuda:
        require_driver_reads(compiled.ptx, driver_cuda, f"{kernel} ({dtype}, sm_{cc})")
    return compiled


def require_sound_driver(cc: int, driver_cuda: str) -> None:
    """The driver compiles the plugins' PTX at load: refuse a release whose compiler is below the floor measured
    for sm_`cc` (aot.SOUND_ASSEMBLER)."""
    from dbunet.plugins.aot import require_sound_assembler

    require_sound_assembler(cc, driver_cuda, f"a CUDA {driver_cuda} driver's PTX compiler",
                            "update the driver (CUDA 13.0 came with R580)")


def register_plugins(compute_capability: int | None = None, driver_cuda: str | None = None) -> tuple[str, ...]:
    """Register every dbunet plugin with TensorRT (idempotent). Returns the plugin ids.

    The PTX the AOT implementations return is compiled for `compute_capability` (default: the current
    device's) at the PTX ISA a CUDA `driver_cuda` driver reads (e.g. "12.6"; default: Triton's newest),
    and refused if that driver could not load it."""
    global _registered
    if _registered:
        return tuple(f"{NAMESPACE}::{p}" for p in PLUGINS)
    trt, trtp = _tensorrt()
    def cc() -> int:
        return compute_capability or device_compute_capability()

    def compile_ptx(kernel: str, dtype: str, cc_: int, **shape):
        return plugin_kernel(kernel, dtype, cc_, driver_cuda, **shape)

    same_type = lambda n: ", ".join(["FP32|FP16"] * n)  # noqa: E731 -- all I/O share one precision
    # Annotations are evaluated here, as classes: tensorrt.plugin runs issubclass() on them
    Desc = trtp.TensorDesc
    Tuned = List[trtp.AutoTuneCombination]
    Aot = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]

    # -- BoxConstraint: x, q, k, v, boxes, valid, gate -> out ------------------------------------
    @trtp.register(f"{NAMESPACE}::BoxConstraint")
    def box_desc(x: Desc, q: Desc, k: Desc, v: Desc, boxes: Desc, valid: Desc, gate: Desc) -> Desc:
        return x.like()

    @trtp.autotune(f"{NAMESPACE}::BoxConstraint")
    def box_tune(x: Desc, q: Desc, k: Desc, v: Desc, boxes: Desc, valid: Desc, gate: Desc,
                 outputs: Tuple[Desc]) -> Tuned:
        return [trtp.AutoTuneCombination(same_type(8))]

    @trtp.aot_impl(f"{NAMESPACE}::BoxConstraint")
    def box_aot(x: Desc, q: Desc, k: Desc, v: Desc, boxes: Desc, valid: Desc, gate: Desc,
                outputs: Tuple[Desc], tactic: int) -> Aot:
        n_slots = _constant(k.shape_expr[1], "box slots (N+1)")
        compiled = compile_ptx("box_constraint", _dtype_name(trt, x), cc(), slots=n_slots)
        launch, extra = box_constraint_launch(trtp, compiled, x, q, boxes)
        return compiled.name, compiled.ptx, launch, extra

    # -- SpatialCrossAttention: q, k, v (num_heads) -> out ----------------------------------------
    @trtp.register(f"{NAMESPACE}::SpatialCrossAttention")
    def sca_desc(q: Desc, k: Desc, v: Desc, num_heads: int) -> Desc:
        return v.like()

    @trtp.autotune(f"{NAMESPACE}::SpatialCrossAttention")
    def sca_tune(q: Desc, k: Desc, v: Desc, num_heads: int, outputs: Tuple[Desc]) -> Tuned:
        return [trtp.AutoTuneCombination(same_type(4))]

    @trtp.aot_impl(f"{NAMESPACE}::SpatialCrossAttention")
    def sca_aot(q: Desc, k: Desc, v: Desc, num_heads: int, outputs: Tuple[Desc], tactic: int) -> Aot:
        dk = _constant(q.shape_expr[2], "C_c") // num_heads
        dv = _constant(v.shape_expr[2], "C") // num_heads
        compiled = compile_ptx("spatial_attention", _dtype_name(trt, q), cc(), dk=dk, dv=dv)
        launch, extra = spatial_attention_launch(trtp, compiled, q, v, num_heads)
        return compiled.name, compiled.ptx, launch, extra

    _registered = True
    return tuple(f"{NAMESPACE}::{p}" for p in PLUGINS)
