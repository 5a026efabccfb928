"""dbunet-build's work: one TensorRT engine per component and resolution, from the FP16 ONNX files.

Networks are strongly typed: the exporter's FP16 files (FP16 where it is safe, FP32 where it kept ops
against overflow, FP32 step updates) say each tensor's type, and TensorRT 11 removed the weak-typing
precision flags (BuilderFlag.FP16) that 10.x still had; 10.x accepts the strongly-typed creation flag, so
one path serves both. The dbunet ops run as AOT plugins (Triton PTX) where `tensorrt.plugin` has
`aot_impl` (TensorRT >= 10.9); elsewhere (e.g. TensorRT 10.3 on JetPack 6) their local functions are
inlined into standard ops before parsing. ChannelCrossAttention has no plugin and is always inlined.

polygraphy's loaders do the TensorRT work (network from ONNX, config with profiles and timing cache,
engine bytes); `engine_loader` assembles them without calling TensorRT, so the choices are testable.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dbunet import atomic
from dbunet.config import ModelConfig
from dbunet.engines.cache import ENGINES_DIR, Device, EngineEntry, EngineKey, read_index, write_index
from dbunet.engines.profiles import SIZE_FREE, Resolution, check_build, engine_components, profile
from dbunet.errors import BuildError, ConfigError
from dbunet.manifest import Manifest, inside, sha256_file, shown, verify_artifact
from dbunet.releases import install, require, version_tuple

log = logging.getLogger(__name__)
Report = Callable[[str], None]

MIN_TENSORRT = (10, 0)  # strongly typed networks
PLUGIN_OPS = ("BoxConstraint", "SpatialCrossAttention")  # the dbunet ops with a TensorRT plugin
TIMING_CACHE = "timing.cache"


@dataclass(frozen=True)
class BuildOptions:
    resolutions: tuple[Resolution, ...] = ()  # () = the model's default size
    max_boxes: int | None = None  # None = the model's maximum
    workspace_mb: int | None = None  # None = TensorRT's default (the device's memory)
    timing_cache: Path | None = None  # None = <artifacts>/engines/timing.cache
    optimization_level: int | None = None  # builder optimization level 0-5; None = TensorRT's default (3)

    def __post_init__(self) -> None:
        if self.workspace_mb is not None and self.workspace_mb < 1:
            raise ConfigError(f"workspace must be >= 1 MB, got {self.workspace_mb}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimization level must lie in 0..5, got {self.optimization_level}")

    def builder_options(self) -> dict:
        """What goes into the engine key besides inputs and device."""
        return {"strongly_typed": True, "workspace_mb": self.workspace_mb,
                "optimization_level": self.optimization_level}


# -- what the installed TensorRT offers -----------------------------------------------------------------
def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BuildError(f"TensorRT engines need the tensorrt package, which is not installed ({exc}); "
                         f"{install('trt')} on the target machine") from None
    if version_tuple(trt.__version__) < MIN_TENSORRT:
        raise BuildError(f"TensorRT {trt.__version__} is too old: strongly typed networks need TensorRT >= 10.0")
    return trt


def plugin_mode(trt) -> str:
    """'aot' where tensorrt.plugin has AOT implementations (no Python needed when the engine runs);
    'local-functions' elsewhere: 10.3 (JetPack 6) has no tensorrt.plugin, 10.7-10.8 only JIT plugins."""
    try:
        import tensorrt.plugin as trtp
    except ImportError:
        return "local-functions"
    return "aot" if hasattr(trtp, "aot_impl") and hasattr(trtp, "KernelLaunchParams") else "local-functions"


def strongly_typed_flag(trt) -> bool:
    """Ask for the strongly typed flag where it exists (10.x); TensorRT 11 networks are strongly typed
    without it. Refuse a TensorRT that has neither."""
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        return True
    if version_tuple(trt.__version__) >= (11,):
        return False
    raise BuildError(f"TensorRT {trt.__version__} cannot build strongly typed networks")


def current_device(trt) -> tuple[Device, str]:
    """This machine's (Device, driver CUDA version 'major.minor'), via cuda-python."""
    from dbunet.cuda_runtime import current_device as cuda_device

    info = cuda_device()
    return Device(trt.__version__, info.name, info.compute_capability), info.driver_cuda


def plugin_identity(mode: str, cc: int, driver_cuda: str) -> dict[str, str]:
    """What the plugin PTX depends on (kernel source, Triton, target, PTX ISA), hashed, per plugin."""
    if mode != "aot":
        return {"mode": "local-functions"}
    import triton

    from dbunet.plugins import aot, kernels

    isa = aot.target_isa(cc, driver_cuda)
    source = Path(kernels.__file__).read_bytes() + Path(aot.__file__).read_bytes()
    base = hashlib.sha256(source + f"{triton.__version__}/sm_{cc}/{isa}".encode()).hexdigest()
    return {op: base for op in PLUGIN_OPS}


# -- the ONNX TensorRT parses -----------------------------------------------------------------------------
def prepare_onnx(path: Path, plugin_ops: tuple[str, ...], shapes: dict | None = None) -> bytes:
    """The graph with every dbunet function inlined except those of ops that run as plugins, and every input
    dimension that `shapes` ({input: (min, opt, max)}) fixes made static in the graph itself.

    Static in the graph, not only in the profile: TensorRT builds a plugin's shape expressions from the
    network, where a dynamic dimension is never a build-time constant even when min = max; the box-slot
    count, which the BoxConstraint kernel is compiled for, must be one."""
    import onnx
    from onnx import inliner

    model = onnx.load(str(path))
    inline = [(f.domain, f.name) for f in model.functions if f.domain == "dbunet" and f.name not in plugin_ops]
    if inline:
        model = inliner.inline_selected_functions(model, inline, exclude=False)
    for tensor in model.graph.input:
        lo, _, hi = (shapes or {}).get(tensor.name, (None, None, None))
        for axis, dim in enumerate(tensor.type.tensor_type.shape.dim):
            if lo is not None and lo[axis] == hi[axis] and not dim.HasField("dim_value"):
                dim.dim_value = int(lo[axis])  # replaces the dim_param (a oneof)
    if model.ByteSize() > 2**31 - 1:
        raise BuildError(f"{path}: over 2 GB after inlining; build from an FP16 export")
    return model.SerializeToString()


def attention_forms(path: Path, plugin_ops: tuple[str, ...]) -> str:
    """Which form each attention of a graph takes in its engine: the SpatialCrossAttention plugin, or
    MatMul -> Softmax -> MatMul (an inlined SpatialCrossAttention, a plain UNet's or VAE's attention), the pattern
    TensorRT fuses into its own attention kernel. Empty when the graph has none."""
    import onnx

    from dbunet.onnx_attention import fuse_attention

    model = onnx.load(str(path), load_external_data=False)
    sca = sum(n.domain == "dbunet" and n.op_type == "SpatialCrossAttention" for n in model.graph.node)
    plain = fuse_attention(model, rewrite=False).fused.get("pattern", 0)
    as_plugin = sca if "SpatialCrossAttention" in plugin_ops else 0
    parts = [f"{as_plugin} as the SpatialCrossAttention plugin"] if as_plugin else []
    if sca - as_plugin + plain:
        parts.append(f"{sca - as_plugin + plain} as MatMul-Softmax-MatMul, which TensorRT fuses")
    return ", ".join(parts)


def engine_loader(onnx_bytes: bytes, shapes: dict, options: BuildOptions, timing_cache: Path, strongly_typed: bool):
    """polygraphy's loader chain for one engine: built lazily, so nothing touches TensorRT until called."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxBytes, Profile

    network = NetworkFromOnnxBytes(onnx_bytes, strongly_typed=strongly_typed)
    profile_ = Profile()
    for name, (lo, opt, hi) in shapes.items():
        profile_.add(name, lo, opt, hi)
    pools = None
    if options.workspace_mb:
        import tensorrt as trt

        pools = {trt.MemoryPoolType.WORKSPACE: options.workspace_mb << 20}
    config = CreateConfig(profiles=[profile_], load_timing_cache=str(timing_cache) if timing_cache.is_file() else None,
                          memory_pool_limits=pools, builder_optimization_level=options.optimization_level)
    return EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache))


def build_plan(loader, what: str) -> bytes:
    """Run polygraphy's loader chain; TensorRT's refusal (polygraphy raises after TensorRT logged why) is one line."""
    from polygraphy.exception import PolygraphyException

    try:
        return bytes(loader())
    except PolygraphyException as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "see TensorRT's log above"
        raise BuildError(f"TensorRT could not build {what}: {reason}") from None


# -- the build ----------------------------------------------------------------------------------------------
def build_engines(artifacts: Path, options: BuildOptions = BuildOptions(),  # noqa: B008 -- frozen dataclass
                  report: Report = log.info) -> list[EngineEntry]:
    """Build what is missing for every requested resolution; reuse engines whose key is unchanged."""
    artifacts = Path(artifacts)
    trt = import_tensorrt()  # first: on a machine without TensorRT that is the one thing to say
    require("polygraphy", BuildError, "dbunet-build", "trt")
    device, driver_cuda = current_device(trt)
    manifest = Manifest.read(artifacts)
    config: ModelConfig = manifest.config
    resolutions = options.resolutions or (Resolution(config.defaults.height, config.defaults.width),)
    max_boxes = config.unet.max_boxes if options.max_boxes is None else options.max_boxes
    check_build(config, resolutions, max_boxes)  # all of them, before the first engine
    manifest.check_runnable("fp16", shown(artifacts))  # every engine's graph, likewise (engines build from fp16)
    if options.timing_cache is not None and options.timing_cache.is_dir():
        raise ConfigError(f"--timing-cache {options.timing_cache} is a directory; give a file")
    mode = plugin_mode(trt)
    typed = strongly_typed_flag(trt)
    if mode == "aot":
        from dbunet.plugins.tensorrt_plugins import register_plugins, require_sound_driver

        require_sound_driver(device.compute_capability, driver_cuda)  # before the first engine, not inside TensorRT
        register_plugins(device.compute_capability, driver_cuda)
    plugins = plugin_identity(mode, device.compute_capability, driver_cuda)
    plugin_path = f"aot plugins: {', '.join(PLUGIN_OPS)}" if mode == "aot" else "local functions (no AOT plugins)"
    report(f"{device.describe()}, CUDA {driver_cuda} driver; dbunet ops as {plugin_path}")

    # engines are written where the runtime will read them, never through a link that leaves the directory
    inside(artifacts, ENGINES_DIR, "write engines there")
    timing_cache = options.timing_cache or artifacts / ENGINES_DIR / TIMING_CACHE
    timing_cache.parent.mkdir(parents=True, exist_ok=True)  # polygraphy locks the cache beside it after a build
    index = read_index(artifacts)
    for component in engine_components(config):
        artifact = manifest.find(component, "fp16")
        verify_artifact(artifacts, artifact)
        forms = attention_forms(artifacts / artifact.path, PLUGIN_OPS if mode == "aot" else ())
        if forms:
            report(f"  {component:<16} attention: {forms}")
        for res in resolutions if component not in SIZE_FREE else resolutions[:1]:
            label = "any" if component in SIZE_FREE else str(res)
            shapes = profile(artifact.spec, config, res, max_boxes)
            key = EngineKey(artifact.sha256[artifact.path], device, shapes, plugins, options.builder_options()).digest()
            cached = next((e for e in index if e.key == key and (artifacts / e.file).is_file()
                           and sha256_file(artifacts / e.file) == e.sha256), None)
            if cached:
                report(f"  {component:<16} {label:<9} cached ({cached.file})")
                continue
            start = time.perf_counter()
            plan = build_plan(engine_loader(prepare_onnx(artifacts / artifact.path, PLUGIN_OPS if mode == "aot" else (),
                                                         shapes), shapes, options, timing_cache, typed),
                              f"the {component} engine at {label}")
            rel = f"{ENGINES_DIR}/{component}.{label}.{key[:16]}.plan"
            atomic.write_bytes(artifacts / rel, plan)
            entry = EngineEntry(component, label, key, rel, sha256_file(artifacts / rel), device, plugin_path,
                                {k: list(v) for k, v in shapes.items()})
            replaced = [e for e in index if (e.component, e.resolution, e.device) == (component, label, device)]
            index = [e for e in index if e not in replaced] + [entry]
            write_index(artifacts, index)  # after the plan: the index never names a half-written file
            for old in replaced:
                if old.file != rel and not any(e.file == old.file for e in index):
                    (artifacts / old.file).unlink(missing_ok=True)
            report(f"  {component:<16} {label:<9} built in {time.perf_counter() - start:.1f}s ({plugin_path})")
    return index
