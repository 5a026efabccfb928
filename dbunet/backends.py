"""The backends, in one place: their names, what each runs on, the default, how `auto` chooses, and
`open_pipeline()`, which every front end (dbunet-run, dbunet-bench, the Python API) calls.

Factories are named by import path and imported only when chosen: listing the backends imports no
runtime library, and only `torch` (the PyTorch reference, from the export extra) ever imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    summary: str  # one line for --help and the README
    factory: str  # "module:attribute", imported when the backend is chosen
    reference: bool = False  # the PyTorch reference: a whole pipeline of its own, not a graph runtime
    # whether each denoising loop runs in one call with its tensors on the device: "choice" (whole_loops= decides,
    # None: the backend's default), "always" (TensorRT's CUDA graphs), "never" (a call per step)
    whole_loops: Literal["choice", "always", "never"] = "never"
    precisions: tuple[str, ...] = ("fp32",)  # what it computes in
    reads: str | None = None  # the exported precision it computes every precision from (None: each its own)


REGISTRY: dict[str, BackendInfo] = {b.name: b for b in (
    BackendInfo("ort", "ONNX Runtime: FP32 on the CPU, FP16 on its CUDA provider where onnxruntime-gpu is installed",
                "dbunet.runtime.backends.onnxruntime:OrtBackend", whole_loops="choice",
                precisions=("fp32", "fp16")),
    BackendInfo("openvino", "OpenVINO on the CPU, FP32 or BF16 (CPUs with AVX512-BF16 or AMX); extra `openvino`",
                "dbunet.runtime.backends.openvino:OvBackend", precisions=("fp32", "bf16"), reads="fp32"),
    BackendInfo("trt", "TensorRT engines from dbunet-build, CUDA graphs; extra `trt`",
                "dbunet.runtime.backends.tensorrt:TrtBackend", whole_loops="always",
                precisions=("fp16",)),  # engines strongly typed from the FP16 export
    BackendInfo("torch", "the PyTorch reference the graphs were exported from (FP32; extra `export`)",
                "dbunet.models.pipeline:TorchPipeline", reference=True),
)}
AUTO = "auto"
DEFAULT = AUTO  # the CLI's and the API's default alike
CHOICES = (AUTO, *REGISTRY)
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = tuple(dict.fromkeys(p for b in REGISTRY.values() for p in b.precisions))  # what a run may compute in


def describe() -> str:
    """The --backend help text, from the registry."""
    return "; ".join([f"{AUTO} (default): the fastest available here (see dbunet.backends.choose_backend)",
                      *(f"{b.name}: {b.summary}" for b in REGISTRY.values())])


def describe_precisions() -> str:
    """The --precision help text, from the registry."""
    first, *rest = REGISTRY.values()
    computes = [f"{first.name} computes {' or '.join(first.precisions)}",
                *(f"{b.name} {' or '.join(b.precisions)}" for b in rest)]
    return "default: the backend's fastest on the device. " + ", ".join(computes)


def info(name: str) -> BackendInfo:
    from dbunet.errors import ConfigError

    if name not in REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; valid: {', '.join(CHOICES)}")
    return REGISTRY[name]


def factory(name: str) -> Any:
    module, attribute = info(name).factory.split(":")
    return getattr(importlib.import_module(module), attribute)


def name_of(backend: Any) -> str:
    """The registry's name for a backend object (the classes carry none of their own)."""
    path = f"{type(backend).__module__}:{type(backend).__qualname__}"
    return next((b.name for b in REGISTRY.values() if b.factory == path), type(backend).__name__)


def honours_whole_loops(name: str, whole_loops: bool | None) -> bool:
    """Whether backend `name` honours a whole_loops request (None: no request, any backend)."""
    kind = info(name).whole_loops
    return whole_loops is None or kind == "choice" or whole_loops == (kind == "always")


def check_whole_loops_value(whole_loops: bool | None) -> None:
    """Refuses what is not True, False or None: a truthy string such as "no" would otherwise turn whole loops on."""
    if not isinstance(whole_loops, bool | None):
        from dbunet.errors import ConfigError

        raise ConfigError(f"whole_loops must be True, False or None (the backend's default), got {whole_loops!r}")


def check_whole_loops(name: str, whole_loops: bool | None) -> None:
    check_whole_loops_value(whole_loops)
    if not honours_whole_loops(name, whole_loops):
        from dbunet.errors import ConfigError

        kind = info(name).whole_loops
        raise ConfigError(f"backend {name} {kind} runs each denoising loop in one call, so whole loops cannot be "
                          f"turned {'on' if whole_loops else 'off'} there; ONNX Runtime (ort) has the choice")


def check_known_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        from dbunet.errors import ConfigError

        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")


def check_precision(name: str, precision: str | None) -> None:
    """Refuses a precision that backend `name` does not compute (None: its default), naming the ones that do."""
    from dbunet.errors import ConfigError

    check_known_precision(precision)
    computes = info(name).precisions
    if precision is not None and precision not in computes:
        others = " or ".join(b.name for b in REGISTRY.values() if precision in b.precisions)
        raise ConfigError(f"backend {name} computes in {' or '.join(computes)}, not {precision}; "
                          f"{precision} runs on {others}")


def files_for(backend: str, precision: str | None) -> str | None:
    """The exported precision a request reads, where the request alone decides it (None: the machine decides):
    the backend's `reads`, else the precision asked for (every backend that computes fp32 or fp16 reads its own),
    else the one precision the backend computes (TensorRT: fp16). The PyTorch reference reads no graphs at all."""
    name = requested_backend(backend, precision)
    if name is None:
        return precision
    b = info(name)
    return b.reads or precision or (b.precisions[0] if len(b.precisions) == 1 else None)


def requested_backend(backend: str, precision: str | None) -> str | None:
    """The backend a request runs on where the request alone decides it: the one it names, or under auto the only
    backend that computes its precision (bf16: OpenVINO). None: auto decides on what the machine has."""
    if backend != AUTO:
        return backend
    computing = [b.name for b in REGISTRY.values() if precision in b.precisions]
    return computing[0] if len(computing) == 1 else None


def check_request(backend: str, precision: str | None = None, whole_loops: bool | None = None) -> None:
    """Refuses, before anything loads, a precision or whole_loops value the request's backend cannot honour
    (under auto: where the request alone decides the backend) and a precision no backend computes."""
    check_whole_loops_value(whole_loops)
    name = requested_backend(backend, precision)
    if name is None:
        check_known_precision(precision)
        return
    check_precision(name, precision)
    check_whole_loops(name, whole_loops)


def make_backend(name: str, device: str = "auto", threads: int | None = None, whole_loops: bool | None = None):
    """A graph runtime (dbunet.runtime.backends.base.Backend) by name. whole_loops: each denoising loop in one
    call with its tensors on the device (None: the backend's default); a backend without the choice refuses the
    value it cannot honour."""
    from dbunet.errors import ConfigError

    if info(name).reference:
        raise ConfigError(f"backend {name} is a whole pipeline, not a graph runtime: use open_pipeline()")
    check_whole_loops(name, whole_loops)
    choice = {"whole_loops": whole_loops} if info(name).whole_loops == "choice" else {}
    return factory(name)(device, threads, **choice)


# --backend auto on a CPU: OpenVINO BF16 beats ONNX Runtime FP32 only where the denoiser's work per step is large
# enough for BF16's faster GEMMs to outweigh OpenVINO's per-call overhead. Measured (benchmarks/auto_choice.py):
# the `shapes` model (64x64, work 1.5e5), a whole image, ORT FP32 0.121 s vs OpenVINO BF16 0.153 s (AMD EPYC,
# AVX512-BF16), 0.103 s vs 0.126 s (Intel Xeon, AMX); the sd15 preset at 256x256 (work 3.2e8), one guided step,
# 1.067 s vs 0.570 s (the same AMD), 1.245 s vs 0.378 s (the same Xeon). The threshold sits between the two, on a
# log scale.
BF16_MIN_WORK = 1e7


def denoiser_work(config) -> float:
    """A size model of one denoising step at the model's default size: latent pixels x sum over levels of
    channels^2 / 4^level (the convolutions' and projections' share, which BF16 speeds up)."""
    f = config.vae.downscale
    pixels = (config.defaults.height // f) * (config.defaults.width // f)
    return pixels * sum(c * c / 4**level for level, c in enumerate(config.unet.block_out_channels))


def choose_backend(directory: Path, precision: str | None = None, device: str = "auto",
                   whole_loops: bool | None = None) -> tuple[str, str]:
    """--backend auto: (backend, why). The request decides first: an explicit precision, device or whole_loops is
    never handed to a backend that cannot serve it. Then: TensorRT engines built for this GPU, else ONNX Runtime's
    CUDA provider, else on the CPU OpenVINO BF16 where it is installed, the CPU computes BF16 and the model is
    large enough to gain (BF16_MIN_WORK), else ONNX Runtime."""
    from dbunet.errors import DbunetError
    from dbunet.manifest import Manifest
    from dbunet.runtime.backends.tensorrt import installed as trt_installed

    only = requested_backend(AUTO, precision)
    if only is not None:
        return only, f"only {only} computes {precision}"
    if device not in DEVICES:
        return "ort", f"device {device!r}"  # ONNX Runtime says which devices there are
    trt = info("trt")
    if (device != "cpu" and precision in (None, *trt.precisions) and honours_whole_loops(trt.name, whole_loops)
            and trt_installed()):
        try:
            import tensorrt

            from dbunet.engines.builder import current_device
            from dbunet.engines.cache import read_index

            identity = current_device(tensorrt)[0]  # what TrtBackend checks engines against, without its stream
            if any(e.device == identity for e in read_index(directory)):
                return "trt", f"TensorRT engines built for {identity.gpu}"
        except DbunetError:
            pass
    import onnxruntime

    from dbunet.runtime.backends.onnxruntime import CUDA, cuda_provider_problem

    cuda_problem = cuda_provider_problem() if device != "cpu" else None
    if device == "cuda" or (device == "auto" and not cuda_problem):
        return "ort", "ONNX Runtime's CUDA provider"  # where it cannot start, OrtBackend says why
    unstarted = cuda_problem and CUDA in onnxruntime.get_available_providers()  # onnxruntime-gpu, not started
    if precision is None and honours_whole_loops("openvino", whole_loops) and openvino_usable():
        from dbunet.runtime.backends.openvino import has_bf16

        work = denoiser_work(Manifest.read(directory).config)
        if has_bf16() and work >= BF16_MIN_WORK:
            return "openvino", f"OpenVINO BF16: faster than ONNX Runtime FP32 for a model this size ({work:.1e})"
    return "ort", f"ONNX Runtime on the CPU ({(precision or 'fp32').upper()})" + (
        ": its CUDA provider did not start" if unstarted else "")


def openvino_usable() -> bool:
    """OpenVINO installed, in a release that loads dbunet's graphs (dbunet.releases.check_openvino): `auto`
    passes over a refused one rather than choosing a backend that will not open."""
    from importlib import metadata

    from dbunet.errors import DbunetError
    from dbunet.releases import check_openvino

    if importlib.util.find_spec("openvino") is None:
        return False
    try:
        check_openvino(metadata.version("openvino"), DbunetError)
    except (metadata.PackageNotFoundError, DbunetError):
        return False
    return True


def open_pipeline(directory: str | Path, backend: str = DEFAULT, precision: str | None = None,
                  device: str = "auto", threads: int | None = None, whole_loops: bool | None = None):
    """The cascade from an artifacts directory on a backend by name (`auto`: choose_backend). Returns a
    pipeline: call it with a prompt; `.backend_name`, `.precision` and `.chosen_because` say what runs.
    whole_loops: see make_backend."""
    from dbunet.scalars import python_scalar

    directory, threads, whole_loops = Path(directory), python_scalar(threads), python_scalar(whole_loops)
    check_whole_loops_value(whole_loops)
    why = ""
    if backend == AUTO:
        backend, why = choose_backend(directory, precision, device, whole_loops)
        log.info("backend auto: %s (%s)", backend, why)
    check_request(backend, precision, whole_loops)
    if info(backend).reference:
        from dbunet.errors import ConfigError
        from dbunet.releases import require_models

        require_models(ConfigError, f"--backend {backend}")
        if threads is not None:
            import torch

            from dbunet.runtime.backends.base import check_threads

            check_threads(threads)  # the same rule as the graph runtimes', not torch's RuntimeError

            torch.set_num_threads(threads)
        pipe = factory(backend).from_artifacts(directory, "cpu" if device == "auto" else device)
    else:
        from dbunet.runtime.pipeline import Pipeline

        pipe = Pipeline.from_artifacts(directory, backend, precision, device, threads, whole_loops)
    pipe.backend_name, pipe.chosen_because = backend, why
    return pipe
