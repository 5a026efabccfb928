"""TensorRT plugin registration. TensorRT cannot be installed here: the real test skips without it;
a fake `tensorrt.plugin` (a stand-in for what cannot exist here) checks only our own control flow:
what we register, and the launch grid and scalars our AOT implementations compute."""

import sys
import types

import pytest

from dbunet.plugins import tensorrt_plugins as tp


def test_registers_with_real_tensorrt():
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed in this environment")
    pytest.importorskip("tensorrt.plugin", reason=f"tensorrt {trt.__version__} has no tensorrt.plugin (needs >= 10.7)")
    ids = tp.register_plugins(compute_capability=90)
    assert ids == ("dbunet::BoxConstraint", "dbunet::SpatialCrossAttention")


class _Fake:
    """Records decorators; shape expressions are plain ints, launch params a namespace."""

    def __init__(self):
        self.registered = {}
        self.float16, self.float32 = "fp16", "fp32"

    def _decorator(kind):
        def make(self, plugin_id):
            def wrap(fn):
                self.registered[(kind, plugin_id)] = fn
                return fn
            return wrap
        return make

    register, autotune, aot_impl = _decorator("register"), _decorator("autotune"), _decorator("aot_impl")
    TensorDesc = object

    class KernelLaunchParams(types.SimpleNamespace):
        pass

    class SymIntExprs(tuple):
        @classmethod
        def from_tuple(cls, items):
            return cls(items)

    @staticmethod
    def SymInt32(e):
        return int(e)

    @staticmethod
    def cdiv(a, b):
        return -(-a // b)

    @staticmethod
    def AutoTuneCombination(types_):
        return types_


class _Desc:
    def __init__(self, shape, dtype="fp16"):
        self.shape_expr, self.dtype = list(shape), dtype

    def like(self):
        return _Desc(self.shape_expr, self.dtype)


def test_our_registration_and_launch_arithmetic(monkeypatch):
    fake = _Fake()
    monkeypatch.setattr(tp, "_tensorrt", lambda: (fake, fake))
    monkeypatch.setattr(tp, "_registered", False)
    from dbunet.plugins import aot

    compiled = aot.CompiledKernel("k", ".entry k()", 4, 1024, {"BLOCK_P": 64, "BLOCK_M": 64}, "sm_90")
    calls = []
    monkeypatch.setattr(aot, "compile_ptx", lambda kernel, dtype, cc, **kw: calls.append((kernel, dtype, cc, kw)) or compiled)

    assert tp.register_plugins(compute_capability=87) == ("dbunet::BoxConstraint", "dbunet::SpatialCrossAttention")
    kinds = {k for k, _ in fake.registered}
    assert kinds == {"register", "autotune", "aot_impl"}

    # BoxConstraint at B=2, C=320, 45x37 pixels, d=320, N=30 boxes
    x, q, k = _Desc((2, 320, 45, 37)), _Desc((2, 45 * 37, 320)), _Desc((2, 31, 320))
    boxes = _Desc((2, 30, 4))
    name, ptx, launch, extra = fake.registered[("aot_impl", "dbunet::BoxConstraint")](x, q, k, _Desc((2, 31, 320)), boxes,
                                                                                    _Desc((2, 30)), _Desc(()), (x,), 0)
    assert (name, ptx) == (b"k", b".entry k()")
    assert (launch.grid_x, launch.grid_y, launch.block_x, launch.shared_mem) == (-(-45 * 37 // 64), 2, 128, 1024)
    assert tuple(extra) == (320, 45, 37, 320, 30)  # C, H, W, D, N: the kernel's int32 parameters, in order
    assert calls[-1] == ("box_constraint", "fp16", 87, {"BLOCK_N": 32})

    # SCA at B=2, P=1024, C_c=640, C=320, 8 heads: head dims 80 and 40 padded to 128 and 64
    qs, vs = _Desc((2, 1024, 640), "fp32"), _Desc((2, 1024, 320), "fp32")
    _, _, launch, extra = fake.registered[("aot_impl", "dbunet::SpatialCrossAttention")](qs, qs, vs, 8, (vs,), 0)
    assert (launch.grid_x, launch.grid_y) == (16, 16)
    assert tuple(extra) == (1024, 640, 320, 8, 80, 40)
    assert calls[-1] == ("spatial_attention", "fp32", 87, {"BLOCK_DK": 128, "BLOCK_DV": 64})
    # output descriptors: SCA returns V's shape, BoxConstraint x's
    assert fake.registered[("register", "dbunet::SpatialCrossAttention")](qs, qs, vs, 8).shape_expr == [2, 1024, 320]
    box_out = fake.registered[("register", "dbunet::BoxConstraint")](x, q, k, k, boxes, _Desc((2, 30)), _Desc(()))
    assert box_out.shape_expr == [2, 320, 45, 37]


def test_kernel_parameter_order_matches_the_launch():
    pytest.importorskip("triton", reason="Triton is not installed")
    """TensorRT passes inputs, then the extra int32 scalars, then outputs: the kernels are declared so."""
    from dbunet.plugins import kernels

    box = kernels.box_constraint_kernel.arg_names
    assert box[:13] == ["x_ptr", "q_ptr", "k_ptr", "v_ptr", "boxes_ptr", "valid_ptr", "gate_ptr", "C", "H", "W", "D", "N",
                        "out_ptr"]
    sca = kernels.spatial_attention_kernel.arg_names
    assert sca[:10] == ["q_ptr", "k_ptr", "v_ptr", "P", "CQ", "CV", "HEADS", "DK", "DV", "out_ptr"]


def test_missing_tensorrt_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(tp, "_registered", False)
    with pytest.raises(Exception, match="tensorrt >= 10.7"):
        tp.register_plugins(90)
