"""OpenVINO backend: the same artifacts on Intel's CPU runtime, FP32 or BF16 (torch-free).

OpenVINO's ONNX reader ignores model-local functions, so each graph's dbunet-domain nodes are inlined at
load time, in memory (onnx's inliner), without a second export; graphs with external data are inlined
into a temporary folder outside the artifacts directory that hard-links the original data file. The
inference precision is always explicit: OpenVINO silently runs BF16 on CPUs that have it unless told
otherwise, and a comparison that does not state its precision means nothing. `fp32` is the exact path;
`bf16` needs AVX512-BF16 or AMX. Compiled models are cached in the user's cache folder (never in the
artifacts directory), so a second load is fast.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dbunet.backends import info
from dbunet.errors import ArtifactError, ConfigError
from dbunet.iospec import GraphSpec
from dbunet.manifest import shown
from dbunet.releases import require
from dbunet.runtime.backends.base import GraphBackend, check_threads

log = logging.getLogger(__name__)
HINTS = {"fp32": "f32", "bf16": "bf16"}
OV_TYPES = {"f32": "float32", "f16": "float16", "i64": "int64"}
SHAPE_CACHE = 16  # compiled shapes the CPU plugin keeps per model (an LRU)
PRIMITIVE_CACHE = 64  # oneDNN primitives kept per process (an LRU; the default 1024 grows without end)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/dbunet/openvino, else ~/.cache/...; a relative XDG_CACHE_HOME is ignored, as the XDG base
    directory spec requires (it would scatter caches into whichever folder a run starts in)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "dbunet" / "openvino"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_bf16() -> bool:
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def inlined_model(core, path: Path):
    """The graph at `path` with its local functions inlined, read by OpenVINO; the file is not changed."""
    onnx = require("onnx", ConfigError, "--backend openvino (to inline dbunet's ops)", "openvino")
    from dbunet.onnx_inline import inline_functions

    model = inline_functions(onnx.load(str(path), load_external_data=False))  # external weights stay where they are
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    if not external:
        return core.read_model(model.SerializeToString())
    # OpenVINO reads external data only from inside the model file's folder, and refuses symlinks that leave
    # it: a temporary folder holding hard links to the original data (a copy across filesystems)
    with tempfile.TemporaryDirectory(prefix="dbunet-ov-") as tmp:
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location" and not (Path(tmp) / entry.value).exists():
                    source, link = path.parent / entry.value, Path(tmp) / entry.value
                    try:
                        os.link(source, link)
                    except OSError:
                        log.warning("copying %s for OpenVINO (the temporary folder is on another filesystem)",
                                    shown(source))
                        shutil.copyfile(source, link)
        graph = Path(tmp) / path.name
        graph.write_bytes(model.SerializeToString())
        return core.read_model(str(graph))


def load_failure(exc: Exception) -> str:
    """What OpenVINO's load error says, without its source locations ("Exception from src/...:96:", "Check '...'
    failed at ..."), which lead every message: the first line that names the node, and the last one, the reason."""
    noise = ("Exception from ", "Check '", "FrontEnd API failed", "Errors during ONNX translation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith(noise)]
    if not lines:
        return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return lines[0][:200] if len(lines) == 1 else f"{lines[0][:200]} ... {lines[-1][:200]}"


class OvGraph:
    def __init__(self, compiled, spec: GraphSpec) -> None:
        self.compiled, self.spec = compiled, spec
        self._local = threading.local()  # one infer request per thread: a request is not shared

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self.spec.check_feeds(feeds)
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        # np.require keeps 0-d inputs 0-d (ascontiguousarray would make them 1-d, which OpenVINO refuses)
        results = request.infer({t.name: np.require(feeds[t.name], requirements="C") for t in self.spec.inputs})
        # outputs in graph order, which is the spec's; copied: the request reuses its buffers
        return [np.array(results[port], dtype=np.float32) for port in self.compiled.outputs]

    def close(self) -> None:
        self.compiled = None


class OvBackend(GraphBackend):
    device = "cpu"

    def __init__(self, device: str = "auto", threads: int | None = None,
                 cache_dir: Path | None | str = "default") -> None:
        # oneDNN (inside OpenVINO's CPU plugin) keeps 1024 primitives per process by default, ~1.6 MB per image size
        # seen, without end; read when its cache is first used, so set before the first compile (a user's wins)
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(PRIMITIVE_CACHE))
        ov = require("openvino", ConfigError, "--backend openvino", "openvino")
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--backend openvino runs on the CPU here; device {device!r} is not supported")
        check_threads(threads)
        self.core, self.threads = ov.Core(), threads
        self.cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
        self.precision = "fp32"  # set by Pipeline.from_artifacts through default_precision / artifact_precision

    def default_precision(self, available: set[str]) -> str:
        """BF16 where the CPU computes it (AMX, AVX512-BF16): what --backend auto picks OpenVINO for; else FP32.
        FP16 files are not used on the CPU."""
        return "bf16" if has_bf16() else "fp32"

    def artifact_precision(self, precision: str) -> str:
        """The exported files a precision runs from: FP32 graphs, computed in FP32 or BF16."""
        if precision == "bf16" and not has_bf16():
            raise ConfigError("bf16 needs a CPU with AVX512-BF16 or AMX; this one has neither (use --precision fp32)")
        self.precision = precision
        return info("openvino").reads

    def load(self, path: Path, spec: GraphSpec, identity: str | None = None) -> OvGraph:
        """Compile the graph at `path`; `identity` is its verified sha256 (computed here when not given)."""
        # the CPU plugin keeps kernels per input shape (5000 by default) besides oneDNN's primitives: both capped,
        # the tiny VAE decoder over 399 image sizes grows 22 MB instead of ~1.6 MB per size (README, OpenVINO)
        config = {"INFERENCE_PRECISION_HINT": HINTS[self.precision], "CPU_RUNTIME_CACHE_CAPACITY": str(SHAPE_CACHE)}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        folder = None
        if self.cache_dir:
            from dbunet.manifest import sha256_file

            folder = usable_cache(cache_folder(Path(self.cache_dir), identity or sha256_file(path), self.precision))
            if folder is not None:
                config["CACHE_DIR"] = str(folder)
        try:
            compiled = self.core.compile_model(inlined_model(self.core, Path(path)), "CPU", config)
        except RuntimeError as exc:
            raise ArtifactError(f"{shown(path)}: OpenVINO cannot load it ({load_failure(exc)})") from None
        if folder is not None:
            record_cache(folder)
        def described(ports, declared):  # a port has several names: the declared one where it is among them
            names = [t.name for t in declared] + [None] * len(ports)
            return [(names[i] if names[i] in port.get_names() else port.get_any_name(),
                     OV_TYPES.get(port.get_element_type().get_type_name(), "?"),
                     port.get_partial_shape().rank.get_length()) for i, port in enumerate(ports)]

        found = [described(compiled.inputs, spec.inputs), described(compiled.outputs, spec.outputs)]
        problems = spec.mismatches(*found)
        if problems:
            raise ArtifactError(f"{shown(path)} is not the graph its manifest declares: {'; '.join(problems)}; "
                                "re-run dbunet-export")
        return OvGraph(compiled, spec)


# -- the compiled-model cache ---------------------------------------------------------------------------------
# OpenVINO names its blobs by its own hash of the model and some of the compile options; that hash was seen to
# leave out the inference precision (an FP32 blob loaded for a BF16 run: a black image), and it trusts any blob
# found under its name. So each compiled model gets a folder of its own, named by everything that changes its
# content, and a record of the blobs' sha256 written after compiling; a folder whose files differ from the
# record is emptied and compiled anew.
CACHE_RECORD = "dbunet-cache.json"


def cache_folder(root: Path, identity: str, precision: str) -> Path:
    """root / <artifact sha256>-<precision>-ov<OpenVINO version>-cpu<CPU model and flags>."""
    import hashlib

    import openvino as ov

    cpu = hashlib.sha256((cpu_model() + " " + " ".join(sorted(cpu_flags()))).encode()).hexdigest()[:12]
    version = ov.__version__.split("-")[0]
    return root / f"{identity[:32]}-{precision}-ov{version}-cpu{cpu}"


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")


def _read_record(path: Path) -> dict | None:
    """The cache folder's record of its blobs; {} where there is none yet, None where it cannot be read (then,
    as a record that does not match, the folder is emptied and compiled anew)."""
    from dbunet import jsonfile

    if not path.is_file():
        return {}
    try:
        return jsonfile.loads(path.read_bytes(), ValueError)
    except ValueError:
        return None


def usable_cache(folder: Path) -> Path | None:
    """The folder, made and checked against its record; None (compile without a cache, said once) where the
    cache location cannot be written."""
    from dbunet.manifest import sha256_file

    try:
        folder.mkdir(parents=True, exist_ok=True)
        record_path = folder / CACHE_RECORD
        record = _read_record(record_path)
        blobs = {p.name for p in folder.iterdir() if p.name != CACHE_RECORD and not p.name.startswith(".")}
        if not isinstance(record, dict) or blobs != set(record) or any(
                sha256_file(folder / name) != record[name] for name in blobs):
            if blobs:
                log.warning("OpenVINO cache %s does not match its record: compiling anew", shown(folder))
            for name in blobs | {CACHE_RECORD}:
                (folder / name).unlink(missing_ok=True)
        return folder
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc  # the same for every model's folder
        _warn_once(f"OpenVINO's compiled-model cache is off: {folder.parent} cannot be used ({why})")
        return None


def record_cache(folder: Path) -> None:
    import json

    from dbunet import atomic
    from dbunet.manifest import sha256_file

    try:
        blobs = {p.name: sha256_file(p) for p in folder.iterdir()
                 if p.name != CACHE_RECORD and not p.name.startswith(".")}
        atomic.write_text(folder / CACHE_RECORD, json.dumps(blobs, sort_keys=True))
    except OSError as exc:
        _warn_once(f"OpenVINO's compiled-model cache could not be recorded in {folder} ({exc})")


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(shown(message))  # an OSError names the file by the pinned directory's descriptor
