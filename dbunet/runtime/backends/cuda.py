"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python (torch-free).

Calls go through dbunet.cuda_runtime (checked, one-line errors). Everything runs on one stream; host arrays
are numpy and are copied synchronously with respect to the host (pageable memory), device buffers are raw
pointers from cudaMalloc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dbunet.cuda_runtime import check, import_cudart
from dbunet.errors import CudaError

__all__ = ["Cuda", "CudaError", "DeviceMemory", "GraphExec"]


class Cuda:
    """One device, one stream: allocation, copies, stream capture into graphs, events."""

    def __init__(self, cudart=None) -> None:
        self.rt = cudart or import_cudart()
        self.stream = self.call("cudaStreamCreateWithFlags", self.rt.cudaStreamNonBlocking)

    def call(self, name: str, *args: Any) -> Any:
        return check(self.rt, name, getattr(self.rt, name)(*args))

    # -- memory ------------------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self.call("cudaMalloc", max(int(nbytes), 1)))

    def free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def upload(self, dst: int, array: np.ndarray) -> None:
        a = np.ascontiguousarray(array)
        self.call("cudaMemcpyAsync", dst, a.ctypes.data, a.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                  self.stream)

    def download(self, src: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        self.call("cudaMemcpyAsync", out.ctypes.data, src, out.nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                  self.stream)
        self.synchronize()  # the array is read right after: pageable copies complete only at the sync
        return out

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        """Device to device, on the stream (legal inside a capture)."""
        self.call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self.stream)

    def synchronize(self) -> None:
        self.call("cudaStreamSynchronize", self.stream)

    def memory_in_use(self) -> int:
        free, total = self.call("cudaMemGetInfo")
        return int(total) - int(free)

    # -- graphs ------------------------------------------------------------------------------------------
    def begin_capture(self) -> None:
        # thread-local: another thread's unrelated CUDA calls do not invalidate this capture
        self.call("cudaStreamBeginCapture", self.stream, self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)

    def end_capture(self) -> GraphExec:
        graph = self.call("cudaStreamEndCapture", self.stream)
        try:
            return GraphExec(self, graph, self.call("cudaGraphInstantiate", graph, 0))
        except CudaError:
            self.call("cudaGraphDestroy", graph)
            raise

    def abort_capture(self) -> None:
        """After a capture failed part-way, as trtexec does: end it (a graph TensorRT's failure still returns is
        destroyed, unused), wait for the stream, and clear the error the failure left pending, which the next
        CUDA or TensorRT call would report as its own. Results are not checked: the capture may have ended."""
        err, graph = self.rt.cudaStreamEndCapture(self.stream)[:2]
        if err == self.rt.cudaError_t.cudaSuccess and graph is not None:
            self.rt.cudaGraphDestroy(graph)
        self.rt.cudaStreamSynchronize(self.stream)
        self.rt.cudaGetLastError()

    # -- timing ------------------------------------------------------------------------------------------
    def event(self) -> Any:
        return self.call("cudaEventCreate")

    def record(self, event: Any) -> None:
        self.call("cudaEventRecord", event, self.stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self.call("cudaEventSynchronize", end)
        return float(self.call("cudaEventElapsedTime", start, end))

    def destroy_event(self, event: Any) -> None:
        self.call("cudaEventDestroy", event)

    def close(self) -> None:
        if self.stream is not None:
            self.call("cudaStreamDestroy", self.stream)
            self.stream = None


@dataclass
class GraphExec:
    """An instantiated CUDA graph: one launch replays every captured call with the addresses it saw."""

    cuda: Cuda
    graph: Any
    exec: Any

    def launch(self) -> None:
        self.cuda.call("cudaGraphLaunch", self.exec, self.cuda.stream)

    def destroy(self) -> None:
        self.cuda.call("cudaGraphExecDestroy", self.exec)
        self.cuda.call("cudaGraphDestroy", self.graph)


class DeviceMemory:
    """Named device buffers, allocated once and reused; freed together. Each is its own cudaMalloc: TensorRT
    requires 256-byte aligned tensor addresses, and cudaMalloc gives at least that."""

    def __init__(self, cuda: Cuda) -> None:
        self.cuda = cuda
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)

    def get(self, name: str, nbytes: int) -> int:
        """The buffer `name`, (re)allocated when it is missing or smaller than `nbytes`."""
        ptr, size = self.buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
        return ptr

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self.buffers.values())

    def free(self) -> None:
        for ptr, _ in self.buffers.values():
            self.cuda.free(ptr)
        self.buffers.clear()
