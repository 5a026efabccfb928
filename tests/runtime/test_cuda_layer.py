"""The CUDA layer against the REAL cuda-bindings (installed here; no driver, so every call returns an error code):
signatures, return tuples and error paths run for real. And the CUDA stand-in used by the TensorRT tests is checked
against the same bindings, so it cannot drift from them."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from dbunet import cuda_runtime
from dbunet.errors import CudaError

from trt_runtime_stand_in import StandInCudart, cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode

rt = pytest.importorskip("cuda.bindings.runtime", reason="cuda-bindings is in the dev extra")
ROOT = Path(__file__).resolve().parents[2]


def called_functions() -> set[str]:
    """Every cuda* runtime function the project calls: by name through Cuda.call / check, or on the module."""
    names = set()
    for path in (ROOT / "dbunet").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"""call\(\s*["'](cuda\w+)["']""", text))
        names |= set(re.findall(r"""\brt\.(cuda[A-Z]\w+)\(""", text))
    return names


def test_the_scan_finds_the_calls():
    names = called_functions()
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaStreamBeginCapture", "cudaGraphLaunch", "cudaGetLastError",
            "cudaEventDestroy", "cudaGetDeviceProperties", "cudaDriverGetVersion"} <= names, names


@pytest.fixture
def no_driver_cuda():
    """The project's Cuda object over the real bindings. Its constructor fails here (no stream without a driver,
    tested below), so it is assembled around the default stream (handle 0) to reach every method."""
    from dbunet.runtime.backends.cuda import Cuda

    cuda = object.__new__(Cuda)
    cuda.rt, cuda.stream = rt, 0
    return cuda


def test_every_call_returns_an_error_code_not_a_type_error(no_driver_cuda):
    from dbunet.runtime.backends.cuda import DeviceMemory, GraphExec

    cuda = no_driver_cuda
    host = np.zeros(16, np.float32)
    calls = {
        "malloc": lambda: cuda.malloc(64),
        "free": lambda: cuda.free(0x7F0000000000),
        "upload": lambda: cuda.upload(0x7F0000000000, host),
        "download": lambda: cuda.download(0x7F0000000000, (16,), np.float32),
        "copy": lambda: cuda.copy(0x7F0000000000, 0x7F0000001000, 64),
        "synchronize": cuda.synchronize,
        "memory_in_use": cuda.memory_in_use,
        "begin_capture": cuda.begin_capture,
        "end_capture": cuda.end_capture,
        "event": cuda.event,
        "record": lambda: cuda.record(rt.cudaEvent_t()),
        "elapsed_ms": lambda: cuda.elapsed_ms(rt.cudaEvent_t(), rt.cudaEvent_t()),
        "destroy_event": lambda: cuda.destroy_event(rt.cudaEvent_t()),
        "graph launch": lambda: GraphExec(cuda, rt.cudaGraph_t(), rt.cudaGraphExec_t()).launch(),
        "graph destroy": lambda: GraphExec(cuda, rt.cudaGraph_t(), rt.cudaGraphExec_t()).destroy(),
        "buffer": lambda: DeviceMemory(cuda).get("x", 64),
        "device": lambda: cuda_runtime.current_device(rt),
        "close": cuda.close,
    }
    for what, fn in calls.items():
        with pytest.raises(CudaError) as info:
            fn()
        assert "no NVIDIA driver found" in str(info.value), (what, info.value)
    cuda.stream = 0
    cuda.abort_capture()  # ignores results by design: it must not raise either


def test_stream_creation_without_a_driver_is_one_clear_error():
    from dbunet.runtime.backends.cuda import Cuda

    with pytest.raises(CudaError, match=r"cudaStreamCreateWithFlags: no NVIDIA driver found \(cuda-python [\d.]+"):
        Cuda(rt)


def test_a_driver_older_than_cuda_python_is_named(monkeypatch):
    """JetPack 6 reports CUDA 12.6 from its driver; cuda-python 13 answers every call with
    cudaErrorInsufficientDriver."""
    monkeypatch.setattr(rt, "cudaDriverGetVersion", lambda: (rt.cudaError_t.cudaSuccess, 12060))
    with pytest.raises(CudaError, match=r"driver \(CUDA 12\.6\) is too old for cuda-python .*trt-cuda12") as raised:
        cuda_runtime.current_device(rt)
    # the release the installed bindings were built for (13.x from the dev extra; 12.x where that line is installed)
    bindings, built = re.search(r"cuda-python (\d+)\.\S*, built for CUDA (\d+)\.\d", str(raised.value)).groups()
    assert bindings == built, str(raised.value)


def test_device_query_stops_at_the_first_failed_call(monkeypatch):
    """cudaGetDeviceProperties(None) raises TypeError in the real bindings: it must never be reached with the
    result of a failed cudaGetDevice."""
    with pytest.raises(TypeError):
        rt.cudaGetDeviceProperties(None)
    reached = []
    monkeypatch.setattr(rt, "cudaGetDeviceProperties", lambda device: reached.append(device))
    with pytest.raises(CudaError, match="cudaGetDevice: no NVIDIA driver"):
        cuda_runtime.current_device(rt)
    assert not reached
    from dbunet.plugins.tensorrt_plugins import device_compute_capability

    with pytest.raises(CudaError, match="cudaGetDevice"):
        device_compute_capability()


def test_the_stand_in_has_the_real_signatures_and_values():
    """Each function the project calls exists in the real bindings and in the stand-in, with the same
    parameters; the enum values the stand-in returns are the real ones."""
    for name in sorted(called_functions()):
        real = getattr(rt, name)
        mine = getattr(StandInCudart, name)
        real_params = list(inspect.signature(real).parameters)
        mine_params = list(inspect.signature(inspect.unwrap(mine)).parameters)[1:]  # without self
        assert mine_params == real_params, (name, mine_params, real_params)
    for enum_, real in ((cudaError_t, rt.cudaError_t), (cudaMemcpyKind, rt.cudaMemcpyKind),
                        (cudaStreamCaptureMode, rt.cudaStreamCaptureMode)):
        for member in enum_:
            assert int(getattr(real, member.name)) == int(member), member
    assert int(rt.cudaStreamNonBlocking) == StandInCudart.cudaStreamNonBlocking


def test_cuda_python_is_pinned_per_driver_line():
    """cuda-python 13 needs an R580 driver; JetPack 6 has a CUDA 12.6 one: each target gets the line it can load."""
    import tomllib

    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def cuda_python(extra: str):
        return next(Requirement(r).specifier for r in extras[extra] if Requirement(r).name == "cuda-python")

    assert "13.0.0" in cuda_python("trt") and "12.9.0" not in cuda_python("trt")
    assert "12.6.0" in cuda_python("trt-cuda12") and "13.0.0" not in cuda_python("trt-cuda12")
