"""The assembler floor (dbunet.plugins.aot.SOUND_ASSEMBLER): on an H200, Triton 3.6's bundled ptxas (CUDA 12.8)
turned the FP16 attention kernel's PTX into a cubin 0.68 to 1.05 of its range off the reference, where ptxas 13.0
and a CUDA 13.0 driver's compiler gave the op table's bound (tools/gpu_check.py, its assembler_floor check). Each
path that hands the kernels to an assembler refuses one below the floor before anything runs.

No GPU here: `OnGpu` stands in for a CUDA tensor (the device is the one thing that cannot exist here), and the
ptxas releases are given, as Triton's lookup returns them (tests/plugins/test_aot.py reads the real one)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason='Triton is not installed (pip install -e ".[dev]")')

import torch

from dbunet.errors import BuildError
from dbunet.plugins import aot, launch


def ptxas(release: str):
    return lambda cc: aot.Ptxas(Path(f"/opt/triton/ptxas-{release}"), release)


@pytest.fixture(autouse=True)
def fresh_launcher_cache():
    launch.require_sound_ptxas.cache_clear()
    yield
    launch.require_sound_ptxas.cache_clear()


def test_the_floor_holds_where_it_was_measured_and_nowhere_else():
    for release in ("12.8", "12.9"):  # 12.9 was not run: below the floor is refused, not only what was seen wrong
        with pytest.raises(BuildError, match=rf"^Triton's ptxas \(CUDA {re.escape(release)}\) is older than CUDA "
                                             r"13\.0, the oldest seen to compile the dbunet kernels right on sm_90 "
                                             r"\(ptxas 12\.8 turned FP16 attention .* off on an H200\): set it$"):
            aot.require_sound_assembler(90, release, "Triton's ptxas", "set it")
    aot.require_sound_assembler(90, "13.0", "Triton's ptxas", "set it")
    aot.require_sound_assembler(90, "13.4", "Triton's ptxas", "set it")
    for cc in (87, 89, 100, 120):  # no floor measured there: nothing refused
        aot.require_sound_assembler(cc, "12.8", "Triton's ptxas", "set it")


class OnGpu:
    """A CUDA tensor as the launchers first see it: where it lives, nothing more (no device here)."""

    is_cuda = True
    device = torch.device("cuda", 0)


@pytest.mark.parametrize("op", ["box_constraint", "spatial_cross_attention", "channel_cross_attention"])
def test_the_jit_launchers_refuse_triton_s_ptxas_below_the_floor_before_launching(monkeypatch, op):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(aot, "triton_ptxas", ptxas("12.8"))  # Triton 3.6 on Hopper
    args = [OnGpu()] * {"box_constraint": 7, "spatial_cross_attention": 4, "channel_cross_attention": 3}[op]
    with pytest.raises(BuildError, match=r"^Triton's ptxas /opt/triton/ptxas-12\.8 \(CUDA 12\.8\) is older than CUDA "
                                         r"13\.0, .*: point TRITON_PTXAS_PATH at a newer one"):
        getattr(launch, op)(*args)


def test_the_jit_launchers_take_a_ptxas_at_the_floor_and_any_on_other_gpus(monkeypatch):
    monkeypatch.setattr(aot, "triton_ptxas", ptxas("13.0"))  # TRITON_PTXAS_PATH at CUDA 13.0's
    launch.require_sound_ptxas(90)
    launch.require_sound_ptxas.cache_clear()
    monkeypatch.setattr(aot, "triton_ptxas", ptxas("12.8"))
    launch.require_sound_ptxas(89)  # Ada: nothing measured wrong


def test_the_plugins_refuse_a_driver_below_the_floor_before_compiling(monkeypatch):
    monkeypatch.setattr(aot, "compile_config", lambda *a, **k: pytest.fail("compiled before refusing"))
    from dbunet.plugins.tensorrt_plugins import plugin_kernel

    with pytest.raises(BuildError, match=r"^a CUDA 12\.8 driver's PTX compiler \(CUDA 12\.8\) is older than CUDA "
                                         r"13\.0, .*: update the driver"):
        plugin_kernel("spatial_attention", "fp16", 90, "12.8", dk=40, dv=40)


def test_dbunet_build_refuses_a_hopper_driver_below_the_floor_before_the_first_engine(monkeypatch, tiny_artifacts,
                                                                                    tmp_path):
    """Through the real polygraphy over the TensorRT stand-in with its AOT plugin API (tests/stand_ins), on an H100
    with a CUDA 12.8 driver."""
    pytest.importorskip("polygraphy", reason="polygraphy is in the export extra")
    from dbunet.engines import builder
    from dbunet.engines.cache import Device
    from dbunet.engines.profiles import Resolution

    from trt_builder_stand_in import forget_tensorrt_in_polygraphy, install
    from trt_plugin_stand_in import StandIn

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    trt, _ = install(monkeypatch, "10.9.0", plugin=StandIn())
    monkeypatch.setattr(builder, "current_device", lambda trt_: (Device("10.9.0", "NVIDIA H100", 90), "12.8"))
    try:
        with pytest.raises(BuildError, match=r"CUDA 12\.8 driver's PTX compiler .* right on sm_90"):
            builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),)), report=lambda line: None)
        assert trt.builds == [] and not (art / "engines").exists()
        assert sys.modules["tensorrt.plugin"].plugins == {}  # nothing registered either
    finally:
        forget_tensorrt_in_polygraphy()
