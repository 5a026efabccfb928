"""One TensorRT engine on the GPU: its execution context, I/O buffers per shape, CUDA graphs per shape.

Every engine's context gets its activations from one shared `ActivationRegion`: the cascade runs its
engines one after another on one stream, so it needs the largest engine's scratch memory, not the sum
(what lets the sd15 cascade fit an 8 GB Jetson). `StepLoop` captures a whole denoising loop of a step
engine as one CUDA graph.

TensorRT calls used, and the release that introduced each (all in 10.0 unless noted):
Runtime, Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_mode /
get_tensor_dtype, ICudaEngine.create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED),
ICudaEngine.device_memory_size (10.0; removed in 11) or device_memory_size_v2 (10.1),
IExecutionContext.device_memory (setter; 10.0, superseded in 10.1) or set_device_memory(ptr, size) (10.1),
ICudaEngine.get_tensor_profile_shape, IExecutionContext.set_input_shape / get_tensor_shape /
set_tensor_address / execute_async_v3, nptype.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dbunet.errors import ArtifactError, InputError
from dbunet.iospec import GraphSpec
from dbunet.runtime.backends.cuda import Cuda, CudaError, DeviceMemory, GraphExec

log = logging.getLogger(__name__)
Shapes = dict[str, tuple[int, ...]]


def memory_size(engine) -> int:
    """Activation bytes the engine's context needs (device_memory_size is gone in TensorRT 11)."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def give_memory(context, ptr: int, size: int) -> None:
    if hasattr(context, "set_device_memory"):  # 10.1+: the size lets TensorRT check it
        context.set_device_memory(ptr, size)
    else:
        context.device_memory = ptr


class ActivationRegion:
    """One device allocation shared by every engine's context, sized for the largest."""

    def __init__(self, cuda: Cuda) -> None:
        self.cuda, self.ptr, self.size = cuda, 0, 0
        self.runners: list[EngineRunner] = []

    def attach(self, runner: EngineRunner) -> None:
        self.runners.append(runner)
        needed = memory_size(runner.engine)
        if needed > self.size:  # grow: every context moves, and graphs captured with the old region are stale
            if self.ptr:
                self.cuda.synchronize()
                self.cuda.free(self.ptr)
            self.ptr, self.size = self.cuda.malloc(needed), needed
            for r in self.runners:
                give_memory(r.context, self.ptr, self.size)
                r.drop_graphs()
        else:
            give_memory(runner.context, self.ptr, self.size)

    def free(self) -> None:
        if self.ptr:
            self.cuda.free(self.ptr)
            self.ptr, self.size = 0, 0


def capture(cuda: Cuda, record: Callable[[], None]) -> GraphExec:
    """`record`'s calls as one instantiated graph; on any failure the stream is left usable, no error pending."""
    cuda.begin_capture()
    try:
        record()
        return cuda.end_capture()
    except BaseException:
        cuda.abort_capture()
        raise


class EngineRunner:
    """One engine as a dbunet.runtime.backends.base.Graph: run(feeds) -> outputs in order, close()."""

    def __init__(self, trt, cuda: Cuda, engine, name: str, spec: GraphSpec | None = None) -> None:
        self.cuda, self.engine, self.name, self.spec = cuda, engine, name, spec
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise ArtifactError(f"TensorRT could not create an execution context for the {name} engine")
        self.memory = DeviceMemory(cuda)
        self.graphs: dict[Any, GraphExec] = {}
        self.use_graphs = True
        self.capture_failed = False
        self.bound = False  # every tensor has a shape and an address: an enqueue can run as it is

    # -- shapes and buffers --------------------------------------------------------------------------------
    def set_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> Shapes:
        """Set the input shapes; return every tensor's shape (outputs as TensorRT infers them)."""
        for name in self.inputs:
            if not self.context.set_input_shape(name, tuple(shapes[name])):
                lo, _, hi = (tuple(d) for d in self.engine.get_tensor_profile_shape(name, 0))
                built = str(lo) if lo == hi else f"{lo} to {hi}"
                raise InputError(f"the {self.name} engine takes {name} of shape {built}, not {tuple(shapes[name])}; "
                                 "build engines for this request with dbunet-build (--height/--width, --max-boxes)")
        return {n: tuple(shapes[n]) if n in self.inputs else tuple(self.context.get_tensor_shape(n))
                for n in (*self.inputs, *self.outputs)}

    def buffer(self, name: str, shape: tuple[int, ...], tag: str = "") -> int:
        """A device buffer for tensor `name` at `shape` (`tag` tells apart several of one tensor), allocated
        on first use and then reused: captured graphs keep pointing at it."""
        return self.memory.get(f"{name}{tag}{list(shape)}", int(np.prod(shape)) * self.dtypes[name].itemsize)

    def bind(self, addresses: Mapping[str, int]) -> None:
        for name, ptr in addresses.items():
            if not self.context.set_tensor_address(name, ptr):
                raise CudaError(f"TensorRT refused the address of {name} for the {self.name} engine")
        self.bound = self.bound or set(addresses) == {*self.inputs, *self.outputs}

    def enqueue(self) -> None:
        # TensorRT's Python API takes the stream as an integer handle (cuda-python handles convert with int())
        if not self.context.execute_async_v3(int(self.cuda.stream)):
            raise CudaError(f"TensorRT could not enqueue the {self.name} engine")

    # -- one call --------------------------------------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Host arrays in, host arrays out (outputs in engine order); one CUDA graph per input shape."""
        shapes = self.set_shapes({n: feeds[n].shape for n in self.inputs})
        addresses = {n: self.buffer(n, s) for n, s in shapes.items()}
        for n in self.inputs:
            self.cuda.upload(addresses[n], feeds[n].astype(self.dtypes[n], copy=False))
        self.bind(addresses)
        self.launch(tuple(sorted(shapes.items())), self.enqueue)
        return [self.cuda.download(addresses[n], shapes[n], self.dtypes[n]) for n in self.outputs]

    def launch(self, key: Any, record: Callable[[], None]) -> None:
        """Replay the graph captured for `key`; the first time, run `record` directly (TensorRT may do
        one-time setup on a shape's first enqueue, which a capture cannot hold), then capture it."""
        graph = self.graphs.get(key)
        if graph is not None:
            graph.launch()
            return
        record()
        if not self.use_graphs or self.capture_failed:
            return
        try:
            self.graphs[key] = capture(self.cuda, record)
        except CudaError as exc:
            self.capture_failed = True
            log.warning("%s: CUDA graph capture failed (%s); running per-step launches", self.name, exc)

    def drop_graphs(self) -> None:
        for g in self.graphs.values():
            g.destroy()
        self.graphs.clear()

    def close(self) -> None:
        self.drop_graphs()
        self.memory.free()
        self.context = None


class StepLoop:
    """The N steps of a step engine as one CUDA graph (one launch per image).

    Per step: a device copy of coefficient row i (uploaded once as a table) into the engine's `coeffs`
    input, then the engine. x and x0 alternate between two buffer pairs, so step i reads what step i-1
    wrote without a copy; the result is in pair N % 2. Conditioning inputs are bound once, at fixed
    addresses, so a graph captured for N steps serves every later image with N steps.
    """

    STATE = (("x", "x_next"), ("x0_prev", "x0"))  # (input, output) pairs that carry over between steps

    def __init__(self, runner: EngineRunner) -> None:
        self.runner = runner

    def run(self, rows: np.ndarray, x: np.ndarray, fixed: Mapping[str, np.ndarray]) -> np.ndarray:
        r, n = self.runner, len(rows)
        rows = np.ascontiguousarray(rows, dtype=r.dtypes["coeffs"])
        shapes = r.set_shapes({"x": x.shape, "x0_prev": x.shape, "coeffs": rows.shape[1:],
                               **{k: v.shape for k, v in fixed.items()}})
        for name, value in fixed.items():
            r.cuda.upload(r.buffer(name, shapes[name]), value.astype(r.dtypes[name], copy=False))
        state = {name: [r.buffer(name, x.shape, f".{k}") for k in (0, 1)] for name, _ in self.STATE}
        coeffs, table = r.buffer("coeffs", rows.shape[1:]), r.buffer("coeffs", rows.shape, ".table")
        r.cuda.upload(table, rows)
        r.cuda.upload(state["x"][0], x)
        r.cuda.upload(state["x0_prev"][0], np.zeros_like(x))
        r.bind({name: r.buffer(name, shapes[name]) for name in fixed})
        r.bind({"coeffs": coeffs, **{k: state[k][0] for k, _ in self.STATE}, **{o: state[k][1] for k, o in self.STATE}})
        row_bytes = rows[0].nbytes

        def record() -> None:
            for i in range(n):
                r.cuda.copy(coeffs, table + i * row_bytes, row_bytes)
                r.bind({"coeffs": coeffs})
                for name, out in self.STATE:
                    r.bind({name: state[name][i % 2], out: state[name][(i + 1) % 2]})
                r.enqueue()

        t0 = time.perf_counter()
        r.launch(("loop", n, tuple(sorted(shapes.items()))), record)
        self.issue_s = time.perf_counter() - t0  # host time to issue the loop (dbunet-bench's overhead figure)
        return r.cuda.download(state["x"][n % 2], x.shape, r.dtypes["x_next"])
