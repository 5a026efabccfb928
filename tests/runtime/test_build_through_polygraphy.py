"""dbunet-build through the REAL polygraphy, with a STAND-IN `tensorrt` module underneath it (TensorRT cannot be
installed here; trt_builder_stand_in.py says what the stand-in enforces). Nothing of dbunet or polygraphy is
replaced: the loader chain, the timing-cache lock and merge, the profiles, the engine cache and index all run
for real, and the AOT path compiles the plugins' PTX with the installed Triton."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("polygraphy", reason="polygraphy is in the export extra")

from dbunet.engines import builder
from dbunet.engines.cache import Device, read_index
from dbunet.engines.profiles import Resolution

from trt_builder_stand_in import forget_tensorrt_in_polygraphy
from trt_builder_stand_in import install as install_stand_ins

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def install(monkeypatch, version: str) -> types.ModuleType:
    """The stand-ins, without tensorrt.plugin (the local-functions path, as on JetPack 6), on an Orin."""
    trt, _ = install_stand_ins(monkeypatch, version)
    monkeypatch.setattr(builder, "current_device", lambda trt_: (Device(version, "Orin", 87), "12.6"))
    return trt


@pytest.fixture
def fresh(tiny_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    yield art
    forget_tensorrt_in_polygraphy()


def test_first_build_writes_every_engine_the_timing_cache_and_the_index_and_a_second_reuses_them(fresh, monkeypatch):
    trt = install(monkeypatch, "10.3.0")
    assert not (fresh / "engines").exists()  # fresh artifacts: polygraphy's cache lock needs the folder made
    options = builder.BuildOptions((Resolution(64, 64),), max_boxes=4)
    index = builder.build_engines(fresh, options, report=lambda line: None)
    assert len(index) == len(trt.builds) == 6 and not any("errors" in b for b in trt.builds)
    cache = fresh / "engines" / builder.TIMING_CACHE
    keys = {e.key for e in index}
    assert cache.is_file() and {e.key for e in read_index(fresh)} == keys
    for e in index:
        assert (fresh / e.file).read_bytes().startswith(b"STANDIN-TRT-PLAN")
    # the engines load in the runtime stand-in: the index and plans are what --backend trt reads
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine((fresh / index[0].file).read_bytes())
    assert engine is not None
    # polygraphy merged each build's timing entries into the file: later builds find earlier layers there
    assert sum(b["cache_hits"] for b in trt.builds[1:]) > 0

    builds = len(trt.builds)
    lines = []
    assert {e.key for e in builder.build_engines(fresh, options, report=lines.append)} == keys
    assert len(trt.builds) == builds and sum("cached" in line for line in lines) == 6  # nothing rebuilt
    # which form each attention takes: without AOT plugins the DB-UNet's SpatialCrossAttention is inlined, so
    # all 23 attentions of the step are the MatMul-Softmax-MatMul that TensorRT fuses; the VAE's one too
    forms = {line.split()[0]: line.split("attention: ")[1] for line in lines if "attention:" in line}
    assert forms == {"dbunet_step": "23 as MatMul-Softmax-MatMul, which TensorRT fuses",
                     "vae_decoder": "1 as MatMul-Softmax-MatMul, which TensorRT fuses"}, forms
    assert builder.attention_forms(fresh / "fp16" / "dbunet_step.onnx", builder.PLUGIN_OPS).startswith(
        "3 as the SpatialCrossAttention plugin, 20 as MatMul-Softmax-MatMul")
    # another box count: only the engines that take boxes are rebuilt, from the saved timing cache
    builder.build_engines(fresh, builder.BuildOptions((Resolution(64, 64),), max_boxes=2), report=lambda line: None)
    rebuilt = trt.builds[builds:]
    assert len(rebuilt) == 2 and all(b["cache_hits"] == b["layers"] for b in rebuilt)
    assert not list(fresh.glob("engines/*.tmp")) and not list(fresh.glob("engines/.*"))


def test_engines_graphs_make_the_profiles_static_dims_static(fresh, monkeypatch):
    """The network TensorRT parses has the box axis (and every dim the profile fixes) as a constant."""
    trt = install(monkeypatch, "10.3.0")
    builder.build_engines(fresh, builder.BuildOptions((Resolution(64, 64),), max_boxes=4), report=lambda line: None)
    step = next(b for b in trt.builds if "box_valid" in b["inputs"])
    assert step["inputs"]["boxes"] == (2, 4, 4) and step["inputs"]["x"] == (1, 4, 8, 8)
    text = next(b for b in trt.builds if "input_ids" in b["inputs"])
    assert text["inputs"]["input_ids"] == (2, 77)  # a range (1..4 prompts): its opt, still dynamic


@pytest.mark.parametrize("resolutions,max_boxes,says", [
    ((Resolution(64, 64), Resolution(60, 64)), 4, "resolution 60x64: height and width must be positive multiples"),
    ((Resolution(64, 64), Resolution(1024, 64)), 4, "resolution 1024x64 is beyond this model's maximum of 512x512"),
    ((Resolution(64, 64),), 31, "max boxes must lie in 0..30"),
    ((Resolution(64, 64),), -1, "max boxes must lie in 0..30"),
])
def test_a_request_no_engine_could_serve_is_refused_before_the_first_build(fresh, monkeypatch, resolutions,
                                                                           max_boxes, says):
    """A bad second resolution failed only after the first resolution's engines were built."""
    from dbunet.errors import ConfigError

    trt = install(monkeypatch, "10.3.0")
    with pytest.raises(ConfigError, match=says):
        builder.build_engines(fresh, builder.BuildOptions(resolutions, max_boxes=max_boxes), report=lambda line: None)
    assert trt.builds == [] and not (fresh / "engines").exists()


def _drop_fp16(component: str):
    def damage(art: Path) -> None:
        m = json.loads((art / "manifest.json").read_text())
        m["artifacts"] = [a for a in m["artifacts"] if (a["component"], a["precision"]) != (component, "fp16")]
        (art / "manifest.json").write_text(json.dumps(m))
    return damage


@pytest.mark.parametrize("damage, options, says", [
    # the last engine's graph missing in fp16: the first five were built before the loop reached it
    (_drop_fp16("refiner_step"), {}, "lacks refiner_step in fp16"),
    (lambda art: (art / "cache-dir").mkdir(), {"timing_cache": "cache-dir"}, "is a directory; give a file"),
])
def test_an_export_or_cache_no_build_could_use_is_refused_before_the_first_build(fresh, monkeypatch, damage, options,
                                                                                 says):
    from dbunet.errors import DbunetError

    trt = install(monkeypatch, "10.3.0")
    damage(fresh)
    options = {k: fresh / v for k, v in options.items()}
    with pytest.raises(DbunetError, match=says):
        builder.build_engines(fresh, builder.BuildOptions((Resolution(64, 64),), max_boxes=4, **options),
                              report=lambda line: None)
    assert trt.builds == [] and not (fresh / "engines").exists()


def test_an_engines_folder_linked_out_of_the_artifacts_is_refused_before_the_first_build(fresh, monkeypatch, tmp_path):
    """The runtime refuses engines that resolve outside the artifacts directory (untrusted, like the manifest);
    dbunet-build wrote them through such a link, into whatever folder it named."""
    from dbunet.errors import ArtifactError

    trt = install(monkeypatch, "10.3.0")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (fresh / "engines").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ArtifactError, match="engines resolves outside the artifacts directory .*refusing to write"):
        builder.build_engines(fresh, builder.BuildOptions((Resolution(64, 64),), max_boxes=4),
                              report=lambda line: None)
    assert trt.builds == [] and list(elsewhere.iterdir()) == []


def test_tensorrt_11_builds_strongly_typed_without_the_removed_flags(fresh, monkeypatch):
    trt = install(monkeypatch, "11.4.0")
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and not hasattr(trt.BuilderFlag, "FP16")
    index = builder.build_engines(fresh, builder.BuildOptions((Resolution(64, 64),), max_boxes=4),
                                  report=lambda line: None)
    assert len(index) == 6 and not any("errors" in b for b in trt.builds)


@pytest.mark.parametrize("old", ["0.49.0", "0.49.9", "0.49.20"])
def test_polygraphy_releases_that_fail_with_numpy_2_or_tensorrt_11_are_refused(monkeypatch, tmp_path, old):
    """polygraphy 0.49.0 sets EXPLICIT_BATCH on every network; 0.49.9 maps np.unicode_ (NumPy 2 removed it: the
    export's parity run failed with an AttributeError); up to 0.49.20 every build reads
    IBuilderConfig.int8_calibrator. TensorRT 11 removed both. dbunet-build and the export's parity name the fix."""
    import polygraphy

    from dbunet.errors import ExportError
    from dbunet.export import exporter, parity
    from dbunet.releases import require

    install(monkeypatch, "11.4.0")
    monkeypatch.setattr(polygraphy, "__version__", old)
    says = rf"polygraphy {old} is older than 0.49.24: .*NumPy 2 .*pip install 'polygraphy>=0.49.24'"
    with pytest.raises(builder.BuildError, match=says):
        builder.build_engines(tmp_path)  # before any artifact is read
    with pytest.raises(ExportError, match=says):
        parity.run_onnx(tmp_path / "unread.onnx", {})
    monkeypatch.setattr(exporter, "staged", lambda out: pytest.fail("began the export before refusing"))
    with pytest.raises(ExportError, match=says):
        exporter.export(exporter.ExportOptions(config="tiny", components=("gae",), out=tmp_path / "a"))
    monkeypatch.setattr(polygraphy, "__version__", "0.49.24")
    assert require("polygraphy", ExportError, "the export's parity check", "export") is polygraphy
    forget_tensorrt_in_polygraphy()


_AOT_BUILD = """
import json, sys, types
sys.path.insert(0, {stand_ins!r})
from trt_builder_stand_in import add_builder_api
from trt_runtime_stand_in import StandInCudart, stand_in_tensorrt
from trt_plugin_stand_in import StandIn
from dbunet.engines import builder
from dbunet.engines.cache import Device
from dbunet.engines.profiles import Resolution

cudart = StandInCudart()
trt = add_builder_api(stand_in_tensorrt({version!r}, cudart), {version!r})
trt.plugin = StandIn()
sys.modules.update({{"tensorrt": trt, "tensorrt.plugin": trt.plugin}})
builder.current_device = lambda trt_: (Device({version!r}, "NVIDIA H200", 90), "13.0")
builder.build_engines({art!r}, builder.BuildOptions((Resolution(64, 64),), max_boxes=4), report=lambda line: None)
print(json.dumps(trt.builds, default=list))
"""


@pytest.mark.parametrize("version", ["10.9.0", "11.4.0"])
def test_aot_plugins_get_a_constant_box_slot_count_and_ptx_this_triton_assembles(fresh, version):
    """The step engine's BoxConstraint and SpatialCrossAttention nodes go to our registered plugins; TensorRT
    calls aot_impl with shape expressions from the network, so the slot count must be static there. A fresh
    process: Triton's interpreter (this session's) cannot compile PTX."""
    pytest.importorskip("triton", reason="the AOT plugins compile Triton kernels")
    from dbunet.plugins import aot

    script = _AOT_BUILD.format(stand_ins=str(HERE.parent / "stand_ins"), version=version, art=str(fresh))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    builds = json.loads(proc.stdout.strip().splitlines()[-1])
    plugins = [p for b in builds for p in b.get("plugins", [])]
    assert {p["op"] for p in plugins} == {"BoxConstraint", "SpatialCrossAttention"}
    for p in plugins:
        assert aot.ptx_isa(p["ptx"]) == aot.target_isa(90, "13.0") and ".target sm_90" in p["ptx"]
        if p["op"] == "BoxConstraint":  # C, H, W, D, N for the 4 box slots the engines were built with
            assert p["scalars"][4] == 4 and p["launch"]["grid_y"] == 2
    assert index_files_exist(fresh)


def index_files_exist(art: Path) -> bool:
    index = read_index(art)
    return len(index) == 6 and all((art / e.file).is_file() for e in index)
