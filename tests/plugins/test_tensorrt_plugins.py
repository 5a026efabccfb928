"""TensorRT plugin registration. TensorRT cannot be installed here: the real test skips without it;
a stand-in for `tensorrt.plugin` (tests/stand_ins/trt_plugin_stand_in.py) enforces the rules TensorRT applies
at registration and records what we register, so these tests check our code against TensorRT's contract:
signatures, annotations, and the launch grid and scalars our AOT implementations compute."""

import sys

import pytest

from dbunet.plugins import tensorrt_plugins as tp

from trt_plugin_stand_in import KernelLaunchParams, ShapeExpr, StandIn, SymIntExprs, TensorDesc, float16, float32


def Desc(shape, dtype=float32):
    return TensorDesc(shape, dtype)


def test_registers_with_real_tensorrt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed in this environment")
    pytest.importorskip("tensorrt.plugin", reason=f"tensorrt {trt.__version__} has no tensorrt.plugin (needs >= 10.7)")
    ids = tp.register_plugins(compute_capability=90)
    assert ids == ("dbunet::BoxConstraint", "dbunet::SpatialCrossAttention")


@pytest.fixture
def stand_in(monkeypatch):
    """tensorrt.plugin's stand-in (tests/stand_ins/trt_plugin_stand_in.py): TensorRT cannot be installed here."""
    trtp = StandIn()
    monkeypatch.setattr(tp, "_tensorrt", lambda: (trtp, trtp))
    monkeypatch.setattr(tp, "_registered", False)
    tp.plugin_kernel.cache_clear()  # these tests replace aot.compile_ptx: no PTX from another test
    yield trtp
    tp.plugin_kernel.cache_clear()


def test_our_registration_passes_tensorrts_validation_and_launches_as_computed(stand_in, monkeypatch):
    from dbunet.plugins import aot

    compiled = aot.CompiledKernel("k", ".version 8.5\n.entry k()", 4, 1024, {"BLOCK_P": 64, "BLOCK_M": 64}, "sm_87")
    calls = []
    monkeypatch.setattr(aot, "compile_ptx", lambda kernel, dtype, cc, warps, isa, stages, **kw:
                        calls.append((kernel, dtype, cc, isa, kw)) or compiled)

    assert tp.register_plugins(compute_capability=87, driver_cuda="12.6") == (
        "dbunet::BoxConstraint", "dbunet::SpatialCrossAttention")
    box, sca = stand_in.plugins["dbunet::BoxConstraint"], stand_in.plugins["dbunet::SpatialCrossAttention"]
    assert box.tensors == ["x", "q", "k", "v", "boxes", "valid", "gate"] and box.attrs == {}
    assert sca.tensors == ["q", "k", "v"] and sca.attrs == {"num_heads": int}
    assert all(p.autotune and p.aot_impl for p in (box, sca))

    # BoxConstraint at B=2, C=320, 45x37 pixels, d=320, N=30 boxes (fp16)
    x, q, k = Desc((2, 320, 45, 37), float16), Desc((2, 45 * 37, 320), float16), Desc((2, 31, 320), float16)
    boxes, valid = Desc((2, 30, 4), float16), Desc((2, 30), float16)
    name, ptx, launch, extra = box.aot_impl(x, q, k, Desc((2, 31, 320), float16), boxes, valid, Desc((), float16),
                                            (x.like(),), 0)
    assert (name, ptx) == ("k", ".version 8.5\n.entry k()")
    assert [getattr(launch, f).value for f in ("grid_x", "grid_y", "grid_z", "block_x", "shared_mem")] == \
        [-(-45 * 37 // 64), 2, 1, 128, 1024]
    assert extra.values() == (320, 45, 37, 320, 30)  # C, H, W, D, N: the kernel's int32 parameters, in order
    kernel, dtype, cc, isa, constants = calls[-1]
    assert (kernel, dtype, cc, isa, constants["BLOCK_N"]) == ("box_constraint", "fp16", 87, (8, 5), 32)  # JetPack 6 ISA
    assert box.autotune(x, q, k, k, boxes, valid, x, (x,))[0].io_types == ["FP32|FP16"] * 8

    # SCA at B=2, P=1024, C_c=640, C=320, 8 heads: head dims 80 and 40 padded to 128 and 64 (fp32)
    qs, vs = Desc((2, 1024, 640), float32), Desc((2, 1024, 320), float32)
    _, _, launch, extra = sca.aot_impl(qs, qs, vs, 8, (vs.like(),), 0)
    assert (launch.grid_x.value, launch.grid_y.value) == (16, 16)
    assert extra.values() == (1024, 640, 320, 8, 80, 40)
    kernel, dtype, cc, isa, constants = calls[-1]
    assert (kernel, dtype, constants["BLOCK_DK"], constants["BLOCK_DV"]) == ("spatial_attention", "fp32", 128, 64)
    assert sca.desc(qs, qs, vs, 8).dims == (2, 1024, 320) and box.desc(x, q, k, k, boxes, valid, x).dims == x.dims


def test_channels_must_be_build_time_constants(stand_in, monkeypatch):
    from dbunet.plugins import aot

    compiled = aot.CompiledKernel("k", ".version 8.7", 4, 0, {"BLOCK_M": 64}, "sm_90")
    monkeypatch.setattr(aot, "compile_ptx", lambda *a, **k: compiled)
    tp.register_plugins(compute_capability=90)
    q = Desc((2, 1024, ShapeExpr(640, constant=False)), float16)
    with pytest.raises(Exception, match="C_c must be a build-time constant"):
        stand_in.plugins["dbunet::SpatialCrossAttention"].aot_impl(q, q, q, 8, (q,), 0)


# What TensorRT refuses, the stand-in refuses: the mistakes the first version of our registration made
def test_stand_in_refuses_postponed_annotations():
    trtp = StandIn()
    namespace = {}
    exec("from __future__ import annotations\n"
         "def desc(x: TensorDesc) -> TensorDesc:\n    return x\n", {"TensorDesc": TensorDesc}, namespace)
    with pytest.raises(TypeError):
        trtp.register("dbunet::Op")(namespace["desc"])


def test_stand_in_refuses_unannotated_aot_impl_and_bare_list_autotune():
    from typing import Tuple

    trtp = StandIn()

    @trtp.register("dbunet::Op")
    def desc(x: TensorDesc, scale: int) -> TensorDesc:
        return x.like()

    def aot(x, scale, outputs, tactic):
        return "k", "", KernelLaunchParams(), SymIntExprs(0)

    with pytest.raises(ValueError, match="No return annotation"):
        trtp.aot_impl("dbunet::Op")(aot)

    def tune(x: TensorDesc, scale: int, outputs: Tuple[TensorDesc]) -> list:
        return []

    with pytest.raises(ValueError, match="AutoTuneCombination"):
        trtp.autotune("dbunet::Op")(tune)

    def tune_wrong_order(scale: int, x: TensorDesc, outputs: Tuple[TensorDesc]):
        return []

    with pytest.raises(ValueError, match="does not match"):
        trtp.autotune("dbunet::Op")(tune_wrong_order)
    with pytest.raises(ValueError, match="reserved|invalid"):
        trtp.register("tensorrt::Op")(desc)
    with pytest.raises(AttributeError):
        KernelLaunchParams().block_w = 1


def test_kernel_parameter_order_matches_the_launch():
    pytest.importorskip("triton", reason="Triton is not installed")
    """TensorRT passes inputs, then the extra int32 scalars, then outputs: the kernels are declared so."""
    from dbunet.plugins import kernels

    box = kernels.box_constraint_kernel.arg_names
    assert box[:13] == ["x_ptr", "q_ptr", "k_ptr", "v_ptr", "boxes_ptr", "valid_ptr", "gate_ptr",
                        "C", "H", "W", "D", "N", "out_ptr"]
    sca = kernels.spatial_attention_kernel.arg_names
    assert sca[:10] == ["q_ptr", "k_ptr", "v_ptr", "P", "CQ", "CV", "HEADS", "DK", "DV", "out_ptr"]


def test_missing_tensorrt_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(tp, "_registered", False)
    with pytest.raises(Exception, match="tensorrt >= 10.7"):
        tp.register_plugins(90)


def test_ptx_newer_than_the_driver_is_refused_at_registration(stand_in, monkeypatch):
    from dbunet.plugins import aot

    # what Triton 3.9 writes for sm_90a when the ISA is not pinned: 9.4, which a CUDA 13.0 driver cannot load
    monkeypatch.setattr(aot, "compile_ptx", lambda *a, **k: aot.CompiledKernel("k", ".version 9.4\n", 4, 0,
                                                                              {"BLOCK_M": 64}, "sm_90"))
    tp.register_plugins(compute_capability=90, driver_cuda="13.0")
    q = Desc((2, 1024, 640), float16)
    with pytest.raises(Exception, match=r"PTX ISA 9.4 is newer than this CUDA 13.0 driver reads \(up to 9.0\)"):
        stand_in.plugins["dbunet::SpatialCrossAttention"].aot_impl(q, q, q, 8, (q,), 0)
