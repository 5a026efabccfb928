"""cuda-python's CUDA runtime API for dbunet-build, the plugins and --backend trt: import, checked calls,
one-line errors, the device. Torch-free; a leaf every stage may use.

cuda-python returns a tuple per call, (error, *results). Its major version follows the CUDA release it was
built for, and a driver older than that release answers every call with cudaErrorInsufficientDriver: cuda-python
13 needs an R580 driver, so JetPack 6 (CUDA 12.6 driver) needs the 12.x line (the `trt-cuda12` extra).
cuda-python >= 12.6 exposes the runtime as `cuda.bindings.runtime`; older releases as `cuda.cudart`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dbunet.errors import CudaError
from dbunet.releases import install

INSTALL = f"{install('trt')} (drivers R580 and newer) or {install('trt-cuda12')} (older drivers, JetPack 6)"


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise CudaError(f"the TensorRT path needs cuda-python, which is not installed; {INSTALL}") from None
    return cudart


def bindings_version() -> str:
    """The installed cuda-python (cuda-bindings) release, e.g. '13.5.0'."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def cuda_version(encoded: int) -> str:
    """12060 -> '12.6' (how cudaDriverGetVersion and cudaRuntimeGetVersion encode a release)."""
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def explain(rt, name: str, err) -> str:
    """One line for a failed call: the driver mismatch and the missing device said plainly."""
    errors = rt.cudaError_t
    if err == errors.cudaErrorInsufficientDriver:
        driver = rt.cudaDriverGetVersion()
        encoded = int(driver[1]) if int(driver[0]) == 0 else 0
        built = rt.cudaRuntimeGetVersion()
        needs = f"CUDA {cuda_version(int(built[1]))}" if int(built[0]) == 0 else "a newer CUDA"
        if not encoded:
            return f"{name}: no NVIDIA driver found (cuda-python {bindings_version()} needs one for {needs})"
        return (f"{name}: the NVIDIA driver (CUDA {cuda_version(encoded)}) is too old for cuda-python "
                f"{bindings_version()}, built for {needs}; {INSTALL}")
    if err == errors.cudaErrorNoDevice:
        return f"{name}: no CUDA device (the driver sees none; check CUDA_VISIBLE_DEVICES)"
    return f"{name} failed: {getattr(err, 'name', err)}"


def check(rt, name: str, result: tuple) -> Any:
    """Unwrap (error, *results): the result (a tuple for several, None for none), or CudaError."""
    err, rest = result[0], result[1:]
    if err != rt.cudaError_t.cudaSuccess:
        raise CudaError(explain(rt, name, err))
    return rest[0] if len(rest) == 1 else (rest or None)


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # e.g. "NVIDIA H200"
    compute_capability: int  # e.g. 90
    driver_cuda: str  # the CUDA release the driver supports, "13.0"


def current_device(rt=None) -> DeviceInfo:
    """The current CUDA device, each call checked before its result is used."""
    rt = rt or import_cudart()
    device = check(rt, "cudaGetDevice", rt.cudaGetDevice())
    props = check(rt, "cudaGetDeviceProperties", rt.cudaGetDeviceProperties(device))
    driver = check(rt, "cudaDriverGetVersion", rt.cudaDriverGetVersion())
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(name.rstrip("\x00"), props.major * 10 + props.minor, cuda_version(int(driver)))
