"""ONNX Runtime backend: the CPU provider everywhere, the CUDA provider when onnxruntime-gpu has one."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dbunet.backends import DEVICES
from dbunet.errors import ArtifactError, ConfigError, CudaError
from dbunet.iospec import GraphSpec, TensorSpec
from dbunet.manifest import shown
from dbunet.runtime.backends.base import GraphBackend, check_threads
from dbunet.runtime.cuda_libraries import DRIVER, load_with_dependencies, missing_library


def session_options(threads: int | None):
    """The SessionOptions every graph of this backend runs with (benchmarks profile with the same)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1  # UNet graphs are one long chain: parallelism lives inside ops
    opts.log_severity_level = 3  # errors only: ORT's warnings about folding custom nodes are noise here
    # Worker threads spin between the ops of one run (sleeping and waking them costs ~30% on a UNet
    # of small ops) but stop spinning when the run returns: the cascade alternates between six
    # sessions, each with its own pool, and a pool still spinning steals the cores from the next one.
    # Measured end to end (tiny, 2 cores): no spinning 290-344 ms, spinning 351-361 ms, spinning that
    # stops at the end of each run 227-234 ms. A process-wide shared pool would force every other
    # ONNX Runtime session of the user's process onto it, so it is not used.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}
CUDA = "CUDAExecutionProvider"
# the cuDNN of every onnxruntime-gpu from the floor (1.20) on; 1.31's provider opens it when a session starts (it is
# not among the libraries the provider library itself needs), so the loader's errors never name it
CUDNN = "libcudnn.so.9"
INSTALL_CUDA_LIBRARIES = "pip install 'onnxruntime-gpu[cuda,cudnn]'"


@functools.cache
def cuda_provider_problem() -> str | None:
    """Why ONNX Runtime's CUDA provider cannot run in this process, or None when it can (asked once per process).

    onnxruntime-gpu lists the provider whatever the machine has, and a session asked for it where the driver, the
    GPU or CUDA's libraries are missing comes up on the CPU provider with nothing but a logged error: `auto` would
    run the FP16 graphs on the CPU and say CUDA. So one small session asks for it, after CUDA's libraries were
    loaded from the nvidia-* packages where pip put them (`onnxruntime-gpu[cuda,cudnn]`, or torch's CUDA wheels):
    ONNX Runtime looks there only through its preload_dlls (ORT >= 1.21, which prints what it misses), and only in
    its own site folder; what the provider still misses is looked up in every one (dbunet.runtime.cuda_libraries)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA not in available:
        return f"this onnxruntime offers {', '.join(available)}: the CUDA provider needs onnxruntime-gpu"
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(Exception):  # what it cannot load, the session below finds missing
                ort.preload_dlls()
    library_error = cudnn_error = None  # what still fails to load, the reason below names
    if (library := _provider_library(ort)).is_file():
        library_error = load_with_dependencies(library)
        cudnn_error = load_with_dependencies(CUDNN)  # not a load-time need: the provider opens it in a session
    # A provider that does not start is logged by ONNX Runtime as errors of its own, several lines on stderr; the
    # reason is said in one line below instead (ONNX Runtime's default logger is set back to its default, warnings)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    ort.set_default_logger_severity(4)
    try:
        with warnings.catch_warnings():  # the Python side's, where the build lacks the provider
            warnings.simplefilter("ignore")
            session = ort.InferenceSession(_identity_graph(), options, providers=[CUDA])
        if CUDA in session.get_providers():
            return None
    except Exception as exc:  # noqa: BLE001 -- any refusal is the answer, in its first line
        return f"ONNX Runtime's CUDA provider did not start: {str(exc).splitlines()[0]}"
    finally:
        ort.set_default_logger_severity(2)
    return _why_not_started(ort, library_error, cudnn_error)


def _why_not_started(ort, library_error: str | None, cudnn_error: str | None) -> str:
    """The provider library's own load error where it does not load (a CUDA library or the driver missing), else
    cuDNN's where it does not load, else the device: what ONNX Runtime logs, in one line."""
    from onnxruntime.capi import build_and_package_info as build

    package = f"{getattr(build, 'package_name', 'onnxruntime-gpu')} {ort.__version__}"
    cuda = f"CUDA {build.cuda_version}" if getattr(build, "cuda_version", "") else "CUDA"
    if library_error is not None and (missing_library(library_error) or "").startswith(DRIVER):
        return f"{package}'s CUDA provider needs an NVIDIA driver, and none is installed ({library_error})"
    if library_error is not None:
        return (f"{package}'s CUDA provider does not load ({library_error}): it needs the {cuda} and cuDNN 9 "
                f"libraries, e.g. {INSTALL_CUDA_LIBRARIES}")
    if cudnn_error is not None:
        return (f"{package}'s CUDA provider needs cuDNN 9, which does not load ({cudnn_error}): "
                f"{INSTALL_CUDA_LIBRARIES}")
    return f"{package}'s CUDA provider did not start: no CUDA device (no GPU, or a driver too old for {cuda})"


def _provider_library(ort) -> Path:
    return Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"


def _identity_graph() -> bytes:
    from onnx import TensorProto, helper

    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y"))
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "cuda_probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9).SerializeToString()


def _graph_source(path: Path, options, fuse: bool):
    """What the session loads: the file itself, or (fuse) its graph with each attention as one MultiHeadAttention
    node (dbunet.onnx_attention.load_rewritten). Returns (path or bytes, the rewrite's report or None)."""
    if not fuse:
        return str(path), None
    from dbunet.onnx_attention import load_rewritten

    data, report = load_rewritten(path, options)
    return (str(path) if data is None else data), report


# ONNX Runtime refuses a CUDA-graph session in which any node landed outside the CUDA provider (shape arithmetic
# on the CPU, a Memcpy node); its message names "the graph capture feature".
CUDA_GRAPH_REFUSAL = "graph capture"
# whole loops: pinned sessions kept per step graph (each holds its weights): one size, guided, 0, 1, 2 and 3-4 boxes
LOOP_SHAPES = 4


class OrtGraph:
    def __init__(self, path: Path, spec: GraphSpec, providers: list[str], threads: int | None,
                 fuse_attention: bool = True, fixed_dims: Mapping[str, int] | None = None,
                 cuda_graph: bool = False) -> None:
        """fixed_dims: the graph's symbolic dims pinned to sizes (ONNX Runtime then folds the shape arithmetic
        away, which its CUDA graphs need); cuda_graph: ask the CUDA provider to capture the runs made with a
        `gpu_graph_id` (dbunet.runtime.backends.ort_loop). Where ONNX Runtime refuses the capture, the session
        is made without it and `cuda_graph_refused` says why."""
        import onnxruntime as ort

        self.spec, self.path, self.fixed_dims = spec, path, dict(fixed_dims or {})
        self._options = (providers, threads, fuse_attention)
        on_cuda = CUDA in providers
        options = session_options(threads)
        for name, size in self.fixed_dims.items():
            options.add_free_dimension_override_by_name(name, size)
        if self.fixed_dims and not on_cuda:
            # a fixed shape's memory pattern is one more block held per session: sd15's step at 256 held 0.19 GB
            # more with it and ran no faster (benchmarks/README.md, ort_loop); the CUDA provider keeps ORT's default
            # (whether its CUDA graphs gain from it is for a GPU to show)
            options.enable_mem_pattern = False
        source, self.attention = _graph_source(path, options, fuse_attention)
        self.cuda_graph_refused, session = None, None
        try:
            if cuda_graph and on_cuda:
                try:
                    session = ort.InferenceSession(source, options, providers=_with_cuda_graph(providers))
                except Exception as exc:  # noqa: BLE001 -- only the capture refusal is retried without it
                    if CUDA_GRAPH_REFUSAL not in str(exc):
                        raise
                    self.cuda_graph_refused = str(exc).splitlines()[0]
            self.cuda_graph = session is not None and session.get_providers()[0] == CUDA
            self.session = session or ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # a file that is no valid ONNX graph
            raise ArtifactError(f"{shown(path)}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        self.device = "cuda" if CUDA in self.session.get_providers() else "cpu"
        found = [[(t.name, ORT_TYPES.get(t.type, t.type), len(t.shape)) for t in ts]
                 for ts in (self.session.get_inputs(), self.session.get_outputs())]
        problems = spec.mismatches(*found)
        if problems:
            raise ArtifactError(f"{shown(path)} is not the graph its manifest declares: {'; '.join(problems)}; "
                                "re-run dbunet-export")

    def pinned(self, sizes: Mapping[str, int], cuda_graph: bool = False) -> OrtGraph:
        """The same graph file in a second session with its symbolic dims fixed to `sizes` (one per shape)."""
        providers, threads, fuse = self._options
        return OrtGraph(self.path, self.spec, providers, threads, fuse, sizes, cuda_graph)

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self.session is None:
            raise RuntimeError(f"{shown(self.path)}: its session was closed (whole loops run it pinned, per shape)")
        sizes = self.spec.check_feeds(feeds)
        # I/O binding: inputs are bound in place; on the CPU each output whose shape follows from the
        # inputs is written straight into a fresh numpy array (no copy, and no aliasing between calls).
        # One binding per call: a session runs calls from several threads at once, a binding does not.
        binding = self.session.io_binding()
        for t in self.spec.inputs:
            binding.bind_cpu_input(t.name, np.ascontiguousarray(feeds[t.name]))
        outputs: list[np.ndarray | None] = []
        for t in self.spec.outputs:
            out = self._output_array(t, sizes)
            if out is None:
                binding.bind_output(t.name, self.device)
            else:
                binding.bind_output(t.name, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
            outputs.append(out)
        self.session.run_with_iobinding(binding)
        allocated = binding.get_outputs() if any(o is None for o in outputs) else None
        return [np.asarray(allocated[i].numpy() if out is None else out, dtype=np.float32)
                for i, out in enumerate(outputs)]

    def _output_array(self, t: TensorSpec, sizes: dict[str, int]) -> np.ndarray | None:
        """An empty array for output `t`, or None where ONNX Runtime must allocate it (the CUDA
        provider, or a dim the inputs do not determine, such as the VAE decoder's image size)."""
        if self.device != "cpu" or any(isinstance(d, str) and d not in sizes for d in t.dims):
            return None
        return np.empty(t.shape(sizes), dtype=t.dtype)

    def close(self) -> None:
        self.session = None


def _with_cuda_graph(providers: list[str]) -> list:
    return [(CUDA, {"enable_cuda_graph": "1"}) if p == CUDA else p
            for p in providers]


class OrtBackend(GraphBackend):

    def __init__(self, device: str = "auto", threads: int | None = None, fuse_attention: bool = True,
                 whole_loops: bool | None = None, loop_shapes: int = LOOP_SHAPES) -> None:
        """fuse_attention: run each attention as ONNX Runtime's MultiHeadAttention (memory linear in the tokens;
        dbunet.onnx_attention); False runs the graphs as exported (for comparisons).
        whole_loops: each denoising loop with its tensors resident on the device, in a session per shape, as CUDA
        graphs on the CUDA provider (dbunet.runtime.backends.ort_loop); None: on the CUDA provider only. On the
        CPU it gains on small graphs only (benchmarks/ort_loop.py: shapes 0.79-0.87x per image, sd15 0.98x, within
        noise) and holds about the same memory, but builds a session per shape on the first image (sd15: 8-11 s),
        and the progress bar would move once per loop instead of once per step.
        loop_shapes: with whole loops, the pinned sessions kept per step graph (each holds its weights; the least
        recently used shape is released first; box counts run padded to the next power of two)."""
        check_threads(threads)
        if device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        problem = cuda_provider_problem() if device != "cpu" else None
        if device == "cuda" and problem:
            raise CudaError(f"device 'cuda': {problem}")
        if device == "auto":
            device = "cpu" if problem else "cuda"
        self.device = device
        self.threads = threads
        self.fuse_attention = fuse_attention
        self.whole_loops = device == "cuda" if whole_loops is None else whole_loops
        if loop_shapes < 1:
            raise ConfigError(f"loop_shapes must be at least 1, got {loop_shapes}")
        self.loop_shapes = loop_shapes
        self.providers = [CUDA] if device == "cuda" else []
        self.providers.append("CPUExecutionProvider")

    def load(self, path: Path, spec: GraphSpec, identity: str | None = None) -> OrtGraph:
        """`identity` (the graph's verified sha256) is for backends that cache compiled forms; ONNX Runtime does not."""
        graph = OrtGraph(path, spec, self.providers, self.threads, self.fuse_attention)
        if graph.device != self.device:  # the provider started for the probe and not for this graph
            raise CudaError(f"{shown(path)}: ONNX Runtime put it on the {graph.device.upper()}, not on the CUDA "
                            "provider (its messages above say why)")
        return graph

    def stages(self, manifest, directory: Path, precision: str, tokenizers):
        stages = super().stages(manifest, directory, precision, tokenizers)
        if not self.whole_loops:
            return stages
        from dbunet.runtime.backends.ort_loop import OrtLoopStages

        return OrtLoopStages(stages.graphs, stages.tokenizers, stages.boxes, cuda_graph=self.device == "cuda",
                             max_boxes=manifest.config.unet.max_boxes, max_shapes=self.loop_shapes)

    def default_precision(self, available: set[str]) -> str:
        # fp16 pays off on GPUs; ONNX Runtime's CPU kernels are fp32 (fp16 runs slower there)
        if self.device == "cuda" and "fp16" in available:
            return "fp16"
        return "fp32" if "fp32" in available else sorted(available)[0]
