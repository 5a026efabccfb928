"""The engine builder's own control flow. TensorRT cannot be installed here: a stand-in `tensorrt`
module (version, creation flags, optional `tensorrt.plugin`) decides which path is taken, the builder's
single TensorRT call (polygraphy's EngineBytesFromNetwork) is replaced by a recorder, and everything
around it is real: polygraphy's loader objects, the ONNX files, the cache, the index, atomic writes."""

import sys
import types

import onnx
import pytest

from dbunet.architectures import DBUNET
from dbunet.engines import builder
from dbunet.engines.cache import Device, EngineKey, find_engine, read_index
from dbunet.engines.profiles import Resolution, profile
from dbunet.errors import ArtifactError, BuildError
from dbunet.manifest import Manifest

H100 = Device("10.9.0", "NVIDIA H100 80GB HBM3", 90)


def _stand_in_tensorrt(monkeypatch, version: str, strongly_typed_flag: bool = True, plugin: str | None = "aot"):
    """A stand-in `tensorrt` (and `tensorrt.plugin` when `plugin` is 'aot' or 'jit')."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    flags = {"STRONGLY_TYPED": 1} if strongly_typed_flag else {}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    if plugin is None:
        monkeypatch.setitem(sys.modules, "tensorrt.plugin", None)
    else:
        trtp = types.ModuleType("tensorrt.plugin")
        trtp.register = trtp.impl = lambda *a: None
        if plugin == "aot":
            trtp.aot_impl = lambda *a: None
            trtp.KernelLaunchParams = type("KernelLaunchParams", (), {})
        monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
        trt.plugin = trtp
    return trt


@pytest.mark.parametrize("version,plugin,mode", [
    ("10.3.0", None, "local-functions"),  # JetPack 6: no tensorrt.plugin
    ("10.8.0", "jit", "local-functions"),  # Python plugins without AOT: they would need Python at run time
    ("10.9.0", "aot", "aot"),
    ("11.4.0", "aot", "aot"),
])
def test_plugin_path_per_tensorrt_version(monkeypatch, version, plugin, mode):
    trt = _stand_in_tensorrt(monkeypatch, version, plugin=plugin)
    assert builder.plugin_mode(trt) == mode


def test_strongly_typed_on_10x_and_11x_and_too_old_refused(monkeypatch):
    assert builder.strongly_typed_flag(_stand_in_tensorrt(monkeypatch, "10.3.0")) is True
    # TensorRT 11: strong typing is the only mode (the weak-typing precision flags are gone)
    assert builder.strongly_typed_flag(_stand_in_tensorrt(monkeypatch, "11.4.0", strongly_typed_flag=False)) is False
    _stand_in_tensorrt(monkeypatch, "8.6.1")
    with pytest.raises(BuildError, match=">= 10.0"):
        builder.import_tensorrt()


def test_missing_tensorrt_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BuildError, match=r'tensorrt package.*not installed.*pip install -e "\.\[trt\]"'):
        builder.import_tensorrt()


def test_static_profiles_follow_the_specs(tiny_artifacts):
    manifest = Manifest.read(tiny_artifacts)
    cfg = manifest.config
    step = profile(manifest.find("dbunet_step", "fp16").spec, cfg, Resolution(96, 64), max_boxes=30)
    assert step["x"] == ((1, 4, 12, 8),) * 3  # min = opt = max: CUDA graphs need static shapes
    assert step["text"] == ((2, 77, 64),) * 3 and step["boxes"] == ((2, 30, 4),) * 3 and step["coeffs"] == ((11,),) * 3
    text = profile(manifest.find("text_encoder", "fp16").spec, cfg, Resolution(96, 64), max_boxes=30)
    assert text["input_ids"] == ((1, 77), (2, 77), (30, 77))  # prompts, or one phrase per box
    with pytest.raises(Exception, match="multiples of 8"):
        profile(manifest.find("vae_decoder", "fp16").spec, cfg, Resolution(100, 64), 4)
    with pytest.raises(Exception, match="0..30"):
        profile(manifest.find("dbunet_step", "fp16").spec, cfg, Resolution(64, 64), 31)


def test_loader_chain_asks_for_a_strongly_typed_network_with_static_profiles_and_no_precision_flags(tmp_path):
    """polygraphy's own loader objects, inspected before anything calls TensorRT."""
    shapes = {"x": ((1, 4, 8, 8),) * 3, "coeffs": ((11,),) * 3}
    cache = tmp_path / "timing.cache"
    loader = builder.engine_loader(b"onnx", shapes, builder.BuildOptions(), cache, strongly_typed=True)
    network, config = loader._network, loader._config
    assert network.strongly_typed is True and network._model_bytes == b"onnx"
    assert [{name: (s.min, s.opt, s.max) for name, s in p.items()} for p in config.profiles] == [shapes]
    assert not config.fp16 and not config.tf32  # strongly typed: the types come from the graph
    assert config.timing_cache_path is None and loader.timing_cache_path == str(cache)  # first build creates it
    cache.write_bytes(b"tactics")
    again = builder.engine_loader(b"onnx", shapes, builder.BuildOptions(), cache, strongly_typed=True)
    assert again._config.timing_cache_path == str(cache)  # later builds reuse it


def test_prepared_onnx_keeps_plugin_nodes_and_inlines_the_rest(tiny_artifacts):
    path = tiny_artifacts / "fp16" / "dbunet_step.onnx"
    aot = onnx.load_from_string(builder.prepare_onnx(path, builder.PLUGIN_OPS))
    ops = {n.op_type for n in aot.graph.node if n.domain == "dbunet"}
    assert ops == {"BoxConstraint", "SpatialCrossAttention"}  # CCA has no plugin: inlined
    assert {f.name for f in aot.functions} == {"BoxConstraint", "SpatialCrossAttention"}
    plain = onnx.load_from_string(builder.prepare_onnx(path, ()))
    assert not [n for n in plain.graph.node if n.domain == "dbunet"] and not plain.functions
    onnx.checker.check_model(plain, full_check=True)


def test_engine_key_changes_with_every_input_and_only_then():
    shapes = {"x": ((1, 4, 64, 64),) * 3}
    base = dict(onnx_sha256="a" * 64, device=H100, shapes=shapes, plugins={"BoxConstraint": "p"},
                options={"strongly_typed": True, "workspace_mb": None})
    key = EngineKey(**base).digest()
    assert EngineKey(**base).digest() == key
    changes = {
        "onnx_sha256": "b" * 64,
        "device": Device("10.10.0", H100.gpu, 90),
        "shapes": {"x": ((1, 4, 64, 96),) * 3},
        "plugins": {"BoxConstraint": "q"},
        "options": {"strongly_typed": True, "workspace_mb": 4096},
    }
    for field, value in changes.items():
        assert EngineKey(**{**base, field: value}).digest() != key, field
    assert EngineKey(**{**base, "device": Device(H100.tensorrt, "NVIDIA H200", 90)}).digest() != key


@pytest.fixture
def stand_in_build(monkeypatch, tiny_artifacts, tmp_path):
    """build_engines on a copy of the tiny artifacts through the real polygraphy, with TensorRT 10.3 stood in
    underneath it (tests/stand_ins: the local-functions path of JetPack 6, no plugin registration) on an Orin.
    Returns the artifacts and the stand-in's record of every build TensorRT was asked for."""
    import shutil

    from trt_builder_stand_in import forget_tensorrt_in_polygraphy, install

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    trt, _ = install(monkeypatch, "10.3.0")
    monkeypatch.setattr(builder, "current_device", lambda trt_: (Device("10.3.0", "Orin", 87), "12.6"))
    yield art, trt.builds
    forget_tensorrt_in_polygraphy()


def test_build_writes_every_engine_once_and_reuses_unchanged_ones(stand_in_build):
    art, calls = stand_in_build
    lines = []
    index = builder.build_engines(art, builder.BuildOptions((Resolution(64, 64), Resolution(128, 96))), lines.append)
    # size-free components once, the others once per resolution
    assert len(calls) == len(index) == 2 + 4 * 2
    assert {e.component for e in index} == set(DBUNET.run_graphs)
    assert all((art / e.file).read_bytes().startswith(b"STANDIN-TRT-PLAN") for e in index)
    assert all(e.plugin_path.startswith("local functions") for e in index)
    assert "local functions" in lines[0]
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64), Resolution(128, 96))), lines.append)
    assert len(calls) == 10 and sum("cached" in line for line in lines) == 10  # nothing rebuilt
    # another box count changes the denoising step's profile: exactly its engines are rebuilt
    builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),), max_boxes=4), lines.append)
    assert len(calls) == 10 + 2  # only the two that take boxes: the text encoder (its batch range) and the step
    assert not list(art.glob("engines/*.tmp")) and not list(art.glob("engines/.*"))


def test_a_failed_build_leaves_the_index_naming_only_complete_engines(stand_in_build, monkeypatch):
    art, calls = stand_in_build
    trt = sys.modules["tensorrt"]
    # TensorRT runs out of memory on the refiner step (input x of 3 channels): build_serialized_network
    # returns None, polygraphy raises, dbunet-build says so in one line
    monkeypatch.setattr(trt, "fail_build", lambda inputs: inputs.get("x", (0, 0))[1] == 3)
    with pytest.raises(BuildError, match=r"TensorRT could not build the refiner_step engine at 64x64"):
        builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),)))
    index = read_index(art)
    built = [b for b in calls if "errors" not in b]
    assert len(index) == len(built) == 5 and all((art / e.file).is_file() for e in index)
    # polygraphy's lock file (empty, left in place by its LockFile) sits beside the timing cache
    files = {e.file.split("/")[1] for e in index} | {"index.json", builder.TIMING_CACHE, f"{builder.TIMING_CACHE}.lock"}
    assert {p.name for p in (art / "engines").iterdir()} == files


def test_runtime_refuses_engines_from_another_tensorrt_or_gpu(stand_in_build):
    art, _ = stand_in_build
    index = builder.build_engines(art, builder.BuildOptions((Resolution(64, 64),)))
    orin = Device("10.3.0", "Orin", 87)
    assert find_engine(index, "dbunet_step", "64x64", orin).component == "dbunet_step"
    for other in (Device("10.4.0", "Orin", 87), Device("10.3.0", "NVIDIA A100", 80)):
        with pytest.raises(ArtifactError, match="run dbunet-build on this machine"):
            find_engine(index, "dbunet_step", "64x64", other)
    with pytest.raises(ArtifactError, match=r"no TensorRT engine for dbunet_step at 512x512 \(built: 64x64\)"):
        find_engine(index, "dbunet_step", "512x512", orin)


@pytest.mark.skipif("tensorrt" in sys.modules or __import__("importlib").util.find_spec("tensorrt") is not None,
                    reason="TensorRT is installed: these check the machine without it")
def test_commands_without_tensorrt_say_so_in_one_line_and_write_nothing(tiny_artifacts, tmp_path):
    import shutil
    import subprocess

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    before = sorted(p.relative_to(art) for p in art.rglob("*"))
    for argv in (["-m", "dbunet.cli.build", "--artifacts", str(art)],
                 ["-m", "dbunet.cli.run", "--artifacts", str(art), "--prompt", "a cat", "--backend", "trt",
                  "--output", str(tmp_path / "o.png")],
                 ["-m", "dbunet.cli.bench", "--artifacts", str(art), "--backend", "trt"]):
        proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert "tensorrt" in lines[0] and "not installed" in lines[0], lines[0]
    assert sorted(p.relative_to(art) for p in art.rglob("*")) == before and not (tmp_path / "o.png").exists()


def test_tensorrt_backend_module_imports_without_torch():
    import subprocess

    code = ("import sys; import dbunet.runtime.backends.tensorrt, dbunet.runtime.backends.trt_engine, "
            "dbunet.runtime.backends.cuda, dbunet.runtime.backends.openvino, dbunet.onnx_inline, dbunet.onnx_refs, "
            "dbunet.bench.tensorrt, dbunet.engines.cache, dbunet.engines.profiles; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
