"""STAND-IN for TensorRT's builder API (10.x / 11.x), to run underneath the real polygraphy on machines
without TensorRT. It adds the builder side to the runtime stand-in (trt_runtime_stand_in.stand_in_tensorrt),
so polygraphy's own loaders (NetworkFromOnnxBytes, CreateConfig, Profile.to_trt, EngineBytesFromNetwork with
its timing-cache lock and merge) run for real and the plans they return load in the runtime stand-in.

What it enforces, from NVIDIA's Python API documentation and polygraphy's use of it:
- releases: NetworkDefinitionCreationFlag.EXPLICIT_BATCH exists up to 10.x and is gone in 11 (so a polygraphy
  that always asks for it fails there); STRONGLY_TYPED from 10.0, kept (deprecated) in 11.0; the weak-typing
  precision flags (BuilderFlag.FP16, BF16, INT8, FP8) are gone in 11, and refused on a strongly typed network
  in 10.x; IBuilderConfig.int8_calibrator (deprecated in 10.1) is gone in 11, so a polygraphy that reads it
  unconditionally (before 0.49.24) fails there;
- unknown creation-flag bits are refused; a profile must give every dynamic input a shape with min <= opt <= max,
  and must not contradict an input's static dimensions;
- the ONNX parser takes a `dbunet` node as a plugin only when `dbunet::<op>` is registered in tensorrt.plugin
  and the node carries plugin_namespace="dbunet"; otherwise it expands the node's local function;
- a plugin's aot_impl is called at build time with TensorDescs whose shape expressions are built-time
  constants only where the network makes them so: a dimension that follows a dynamic input dimension is not
  constant even when the profile fixes min = opt = max (TensorRT builds shape expressions from the network, not
  from the profile). Concrete values come from running the graph at the profile's shapes, and constness from a
  second run with every dynamic input dimension changed;
- the timing cache is opaque bytes from serialize(), refused by create_timing_cache when foreign; combine()
  merges entries; a build records which layers it found in the cache it was given.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import inspect
import json
import sys
import types

import numpy as np

from trt_runtime_stand_in import StandInCudart, make_plan, stand_in_tensorrt

CACHE_MAGIC = b"STANDIN-TRT-TIMING\0"
WEAK_TYPING_FLAGS = ("FP16", "BF16", "INT8", "FP8")


class HostMemory:
    """IHostMemory: a buffer (bytes(), len(), memoryview) usable as a context manager, as polygraphy uses it."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    def __buffer__(self, flags):
        return memoryview(self._data)

    def __bytes__(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return len(self._data)

    def __enter__(self):
        return self._data

    def __exit__(self, *exc) -> None:
        return None


def install(monkeypatch, version: str, capturable: bool = True, plugin=None) -> tuple[types.ModuleType, StandInCudart]:
    """Stand-in `tensorrt` (runtime and builder of `version`; `plugin`: a tensorrt.plugin stand-in, or None for a
    TensorRT without it) and cuda-python's runtime API, in sys.modules where polygraphy and dbunet import them."""
    cudart = StandInCudart()
    trt = add_builder_api(stand_in_tensorrt(version, cudart), version, capturable)
    trt.plugin = plugin
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = cudart
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in {"tensorrt": trt, "tensorrt.plugin": plugin, "cuda": cuda, "cuda.bindings": bindings,
                         "cuda.bindings.runtime": cudart}.items():
        monkeypatch.setitem(sys.modules, name, module)
    forget_tensorrt_in_polygraphy()
    return trt, cudart


def forget_tensorrt_in_polygraphy() -> None:
    """polygraphy imports tensorrt lazily and keeps the module, and its logger: forget both between stand-ins."""
    for name in [m for m in sys.modules if m.startswith("polygraphy.")]:
        lazy = getattr(sys.modules[name], "trt", None)
        if type(lazy).__name__ == "LazyModule":
            object.__setattr__(lazy, "module", None)
    if "polygraphy.backend.trt.util" in sys.modules:
        importlib.import_module("polygraphy.backend.trt.util").TRT_LOGGER = None


def add_builder_api(trt: types.ModuleType, version: str, capturable: bool = True) -> types.ModuleType:
    """Give a stand-in `tensorrt` module the builder classes of TensorRT `version` (`capturable`: whether the
    engines it builds can be captured in a CUDA graph)."""
    v = tuple(int(p) for p in version.split(".")[:2])
    creation = {"STRONGLY_TYPED": 1} if v >= (11, 0) else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)
    flags = ["TF32", "REFIT", "DISABLE_TIMING_CACHE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
             "DIRECT_IO", "SPARSE_WEIGHTS", "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE"]
    if v < (11, 0):
        flags += list(WEAK_TYPING_FLAGS)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flags, start=0)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM TACTIC_SHARED_MEMORY", start=0)
    trt.LayerType = enum.Enum("LayerType", "SHAPE PLUGIN_V3 ONNX_OP")
    trt.OnnxParserFlag = enum.IntEnum("OnnxParserFlag", "NATIVE_INSTANCENORM", start=0)
    trt.ProfilingVerbosity = enum.Enum("ProfilingVerbosity", "LAYER_NAMES_ONLY NONE DETAILED")
    trt.PreviewFeature = enum.Enum("PreviewFeature", "RUNTIME_ACTIVATION_RESIZE_10_10")
    trt.DeviceType = enum.Enum("DeviceType", "GPU DLA")
    trt.Logger.INTERNAL_ERROR, trt.Logger.VERBOSE = 0, 4

    class ILogger:
        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    trt.builds = []  # what every build saw: the tests read it

    class Tensor:
        def __init__(self, name: str, shape: tuple, dtype: str):
            self.name, self.shape, self.dtype = name, shape, dtype
            self.is_shape_tensor = False

    class Network:
        def __init__(self, flags: int):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.model = None
            self.plugin_nodes = []

        def get_flag(self, flag) -> bool:
            return bool(self.flags & (1 << int(flag)))

        @property
        def strongly_typed(self) -> bool:
            return bool(self.flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))
        num_layers = property(lambda self: 0)
        get_input = lambda self, i: self.inputs[i]  # noqa: E731
        get_output = lambda self, i: self.outputs[i]  # noqa: E731

        def __iter__(self):
            return iter(())  # layers: none with a precision set (strongly typed)

    class Parser:
        def __init__(self, network: Network, logger):
            if not isinstance(logger, ILogger):
                raise TypeError("OnnxParser(): incompatible function arguments: logger must be an ILogger")
            self.network, self.errors, self.flags = network, [], 0

        num_errors = property(lambda self: len(self.errors))
        get_error = lambda self, i: self.errors[i]  # noqa: E731

        def clear_flag(self, flag) -> None:
            self.flags &= ~(1 << int(flag))

        def parse(self, model_bytes, path=None) -> bool:
            import onnx

            try:
                model = onnx.load_from_string(bytes(model_bytes))
            except Exception as exc:  # noqa: BLE001 -- the parser reports, it does not raise
                self.errors.append(f"cannot read the model: {exc}")
                return False
            registry = getattr(getattr(trt, "plugin", None), "plugins", {})
            functions = {(f.domain, f.name) for f in model.functions}
            for node in model.graph.node:
                if node.domain in ("", "ai.onnx"):
                    continue
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                namespace = attrs.get("plugin_namespace", b"")
                namespace = namespace.decode() if isinstance(namespace, bytes) else namespace
                if f"{namespace}::{node.op_type}" in registry:
                    self.network.plugin_nodes.append(node)
                elif (node.domain, node.op_type) not in functions:
                    self.errors.append(f"no importer, plugin or local function for {node.domain}::{node.op_type}")
            if self.errors:
                return False
            self.network.model = model
            elem = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}
            for vi, into in ((model.graph.input, self.network.inputs), (model.graph.output, self.network.outputs)):
                for t in vi:
                    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.type.tensor_type.shape.dim)
                    into.append(Tensor(t.name, dims, elem[t.type.tensor_type.elem_type]))
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max) -> None:  # noqa: A002 -- TensorRT's parameter names
            lo, mid, hi = (tuple(int(d) for d in s) for s in (min, opt, max))
            same_rank = len(lo) == len(mid) == len(hi)
            if not same_rank or any(not a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True)):
                raise ValueError(f"set_shape({name}): need min <= opt <= max of one rank, got {lo}, {mid}, {hi}")
            self.shapes[name] = (lo, mid, hi)

        def get_shape(self, name):
            return list(self.shapes.get(name, ((), (), ())))

    class TimingCache:
        def __init__(self, entries: dict):
            self.entries = dict(entries)

        def serialize(self) -> HostMemory:
            return HostMemory(CACHE_MAGIC + json.dumps({"tensorrt": version, "entries": self.entries}).encode())

        def combine(self, other, ignore_mismatch: bool) -> bool:
            self.entries.update(other.entries)
            return True

        def reset(self) -> bool:
            self.entries.clear()
            return True

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools = set(), [], {}
            self.cache = None
            self.builder_optimization_level = 3
            self.DLA_core, self.default_device_type = -1, trt.DeviceType.GPU
            self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
            if v < (11, 0):
                self.int8_calibrator = None  # implicit quantization: deprecated in 10.1, removed in 11

        def set_flag(self, flag) -> None:
            self.flags.add(trt.BuilderFlag(flag))

        def clear_flag(self, flag) -> None:
            self.flags.discard(trt.BuilderFlag(flag))

        def get_flag(self, flag) -> bool:
            return trt.BuilderFlag(flag) in self.flags

        def set_memory_pool_limit(self, pool, size) -> None:
            self.pools[trt.MemoryPoolType(pool)] = int(size)

        def get_memory_pool_limit(self, pool) -> int:
            return self.pools.get(trt.MemoryPoolType(pool), 80 << 30)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        num_optimization_profiles = property(lambda self: len(self.profiles))

        def create_timing_cache(self, data) -> TimingCache:
            data = bytes(data)
            if not data:
                return TimingCache({})
            if not data.startswith(CACHE_MAGIC):
                raise RuntimeError("createTimingCache: the serialized timing cache is corrupt or foreign")
            return TimingCache(json.loads(data[len(CACHE_MAGIC):])["entries"])

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger):
            if not isinstance(logger, ILogger):
                raise TypeError("Builder(): incompatible function arguments: logger must be an ILogger")
            self.logger = logger

        platform_has_fast_fp16 = True

        def create_network(self, flags: int = 0) -> Network:
            known = sum(1 << int(flag) for flag in trt.NetworkDefinitionCreationFlag)
            if flags & ~known:
                raise ValueError(f"create_network: unknown NetworkDefinitionCreationFlag bits {flags & ~known:#x}")
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config):
            return build(network, config)

    trt.fail_build = lambda inputs: False  # tests set it to make a build fail as out of memory does

    def build(network: Network, config: Config):
        errors = []
        weak = [f.name for f in config.flags if f.name in WEAK_TYPING_FLAGS]
        if network.strongly_typed and weak:
            errors.append(f"{'/'.join(weak)} flags are not allowed on a strongly typed network")
        profile = config.profiles[0] if config.profiles else Profile()
        for t in network.inputs:
            shape = profile.shapes.get(t.name)
            if shape is None:
                if -1 in t.shape:
                    errors.append(f"{t.name}: dynamic input without a profile shape")
                continue
            if len(shape[0]) != len(t.shape) or any(
                    d != -1 and d != s for lo in shape for d, s in zip(t.shape, lo, strict=True)):
                errors.append(f"{t.name}: profile {shape} contradicts the network's static dims {t.shape}")
        if errors:
            trt.builds.append({"errors": errors})
            return None  # TensorRT logs and returns None; polygraphy raises on it
        fixed = {t.name: profile.shapes[t.name][1] if t.name in profile.shapes else t.shape for t in network.inputs}
        if trt.fail_build(fixed):
            trt.builds.append({"errors": ["out of device memory"], "inputs": fixed})
            return None
        plugins = [call_aot_impl(node, descs) for node, descs in plugin_descs(network, fixed)]
        layers = sorted({hashlib.sha256(n.SerializeToString()).hexdigest()[:16] for n in network.model.graph.node})
        cache = config.cache if config.cache is not None else TimingCache({})
        hits = sum(k in cache.entries for k in layers)
        cache.entries.update({k: "tactic" for k in layers})
        trt.builds.append({"inputs": fixed, "plugins": plugins, "cache_hits": hits, "layers": len(layers)})
        onnx_bytes = network.model.SerializeToString()
        shapes = {t.name: [list(s) for s in profile.shapes.get(t.name, (t.shape,) * 3)] for t in network.inputs}
        # activation size differs per engine, so a shared region (the largest) and a sum differ
        return HostMemory(make_plan(onnx_bytes, shapes, version, device_memory=len(onnx_bytes) // 64 * 4,
                                    capturable=capturable))

    def plugin_descs(network: Network, fixed: dict):
        """(node, TensorDescs of its inputs) for every plugin node: values at the profile's shapes, constant
        where no dynamic input dimension reaches them."""
        if not network.plugin_nodes:
            return []
        wanted = [name for node in network.plugin_nodes for name in node.input]
        changed = {t.name: tuple(s if d != -1 else (2 * s or 1) for d, s in zip(t.shape, fixed[t.name], strict=True))
                   for t in network.inputs}
        at, moved = tensor_shapes(network.model, wanted, fixed), tensor_shapes(network.model, wanted, changed)
        trtp = trt.plugin
        out = []
        for node in network.plugin_nodes:
            descs = []
            for name in node.input:
                dtype = trt.float16 if at[name][1] == np.float16 else trt.float32  # TensorDesc.dtype: a trt.DataType
                exprs = [trtp.ShapeExpr(a, constant=a == b) for a, b in zip(at[name][0], moved[name][0], strict=True)]
                descs.append(trtp.TensorDesc(exprs, dtype))
            out.append((node, descs))
        return out

    def call_aot_impl(node, descs):
        import onnx

        plugin = trt.plugin.plugins[f"dbunet::{node.op_type}"]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        outputs = plugin.desc(*descs, **{k: attrs[k] for k in plugin.attrs})
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        named = {**dict(zip(plugin.tensors, descs, strict=True)), **{k: attrs[k] for k in plugin.attrs},
                 "outputs": outputs, "tactic": 0}
        params = inspect.signature(plugin.aot_impl).parameters
        name, ptx, launch, extra = plugin.aot_impl(**{p: named[p] for p in params})
        return {"op": node.op_type, "kernel": name, "ptx": ptx if isinstance(ptx, str) else ptx.decode(),
                "launch": {f: getattr(launch, f).value for f in launch._FIELDS}, "scalars": extra.values()}

    def tensor_shapes(model, names: list[str], feeds_shapes: dict) -> dict:
        """Shape and dtype of each named tensor when the graph runs on zeros of `feeds_shapes` (ONNX Runtime)."""
        import onnx
        import onnxruntime as ort

        inferred = onnx.shape_inference.infer_shapes(model)
        types_ = {v.name: v.type for v in [*inferred.graph.value_info, *inferred.graph.input]}
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.output[:]
        unique = list(dict.fromkeys(names))
        for n in unique:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(n, types_[n].tensor_type.elem_type, None))
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        np_of = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
        feeds = {i.name: np.zeros(feeds_shapes[i.name], dtype=np_of[i.type]) for i in session.get_inputs()}
        results = session.run(unique, feeds)
        return {n: (r.shape, r.dtype) for n, r in zip(unique, results, strict=True)}

    trt.Builder, trt.OnnxParser = Builder, Parser
    trt.IBuilderConfig, trt.INetworkDefinition = Config, Network
    trt.ITimingCache, trt.IHostMemory = TimingCache, HostMemory
    return trt
