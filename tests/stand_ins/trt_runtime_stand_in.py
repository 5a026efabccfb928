"""STAND-IN for TensorRT's runtime API and cuda-python's CUDA runtime, for machines without a GPU.

Neither TensorRT nor a GPU exists here, so these check the TensorRT backend's own control flow: which
calls it makes, in which order, with which addresses. They are not TensorRT: an "engine" is the prepared
ONNX graph run by ONNX Runtime on simulated device memory. What they enforce is the published contract
of the real libraries, so that code which would fail on a GPU fails here too:

CUDA runtime (cuda-python): calls return (error, *results); a failing call leaves its error pending until
cudaGetLastError reads it (TensorRT's next enqueue fails while one is pending); device memory is only what
cudaMalloc gave (out-of-range copies fail); a copy's kind must match its pointers; during stream capture, cudaMalloc,
cudaFree, cudaStreamSynchronize and copies from pageable host memory are not permitted (they fail and
invalidate the capture); a captured graph replays the calls with the arguments they had at capture; a
stream, event or graph destroyed twice (or never created) is refused.

TensorRT (10.0 / 10.1+ / 11.x Python API): deserialize_cuda_engine returns None for a plan from another
TensorRT version; device_memory_size exists up to 10.x, device_memory_size_v2 from 10.1; the context's
device_memory setter up to 10.x, set_device_memory(ptr, size) from 10.1; a USER_MANAGED context runs only
with device memory of at least the engine's size; set_input_shape refuses shapes outside the profile;
set_tensor_address refuses addresses that are not 256-byte aligned; execute_async_v3 takes an integer
stream handle and fails when an input shape or a tensor address is missing; activations are scratch
(every execution overwrites the engine's device memory with garbage).
"""

from __future__ import annotations

import ctypes
import enum
import inspect
import json
import threading
import types

import numpy as np

ALIGN = 256
PLAN_MAGIC = b"STANDIN-TRT-PLAN\0"


# -- CUDA runtime ----------------------------------------------------------------------------------------------
class cudaError_t(enum.IntEnum):  # values as cuda.bindings.runtime has them (test_cuda_layer checks)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class Handle:
    """cuda-python handles (cudaStream_t, cudaGraph_t, ...) convert to their address with int()."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __int__(self) -> int:
        return self.value


class Capture:
    def __init__(self, thread: int) -> None:
        self.thread, self.nodes, self.invalid = thread, [], None


class StandInCudart(types.SimpleNamespace):
    """The subset of cuda.bindings.runtime the backend calls, plus counters the tests read."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(self, total_memory: int = 8 << 30) -> None:
        super().__init__()
        self.last_error = cudaError_t.cudaSuccess  # what cudaGetLastError returns (and clears)
        self.allocations: dict[int, np.ndarray] = {}
        self.next_address, self.total = 0x7F0000000000, total_memory
        self.captures: dict[int, Capture] = {}  # stream handle -> capture in progress
        self.graphs: dict[int, list] = {}
        self.execs: dict[int, list] = {}
        self.counts = {"malloc": 0, "captures": 0, "launches": 0}
        self.events: set[int] = set()  # created and not yet destroyed
        self.streams: set[int] = set()  # the same for streams
        self._handles = 0

    def _handle(self) -> Handle:
        self._handles += 1
        return Handle(self._handles)

    # memory
    def locate(self, ptr: int, nbytes: int) -> np.ndarray | None:
        """The device bytes [ptr, ptr + nbytes), or None if they are not inside one allocation."""
        for base, mem in self.allocations.items():
            if base <= ptr and ptr + nbytes <= base + mem.size:
                return mem[ptr - base: ptr - base + nbytes]
        return None

    def _unsafe_during_capture(self) -> cudaError_t | None:
        """cudaMalloc/cudaFree are not permitted while this thread captures (thread-local or global mode)."""
        for cap in self.captures.values():
            if cap.thread == threading.get_ident() and cap.invalid is None:
                cap.invalid = "cudaMalloc/cudaFree during capture"
                return cudaError_t.cudaErrorStreamCaptureUnsupported
        return None

    def cudaMalloc(self, size):
        err = self._unsafe_during_capture()
        if err:
            return (err, 0)
        if sum(m.size for m in self.allocations.values()) + size > self.total:
            return (cudaError_t.cudaErrorMemoryAllocation, 0)
        ptr = self.next_address
        self.next_address += (size + ALIGN - 1) // ALIGN * ALIGN + ALIGN
        self.allocations[ptr] = np.zeros(size, dtype=np.uint8)
        self.counts["malloc"] += 1
        return (cudaError_t.cudaSuccess, ptr)

    def cudaFree(self, devPtr):
        err = self._unsafe_during_capture()
        if err:
            return (err,)
        if int(devPtr) not in self.allocations:
            return (cudaError_t.cudaErrorInvalidValue,)
        del self.allocations[int(devPtr)]
        return (cudaError_t.cudaSuccess,)

    def cudaMemGetInfo(self):
        used = sum(m.size for m in self.allocations.values())
        return (cudaError_t.cudaSuccess, self.total - used, self.total)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        dst, src, kind = int(dst), int(src), cudaMemcpyKind(kind)
        cap = self.captures.get(int(stream))
        if cap is not None:
            if kind != cudaMemcpyKind.cudaMemcpyDeviceToDevice:  # the backend's host arrays are pageable
                cap.invalid = "copy from/to pageable host memory during capture"
                return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
            cap.nodes.append(("copy", dst, src, count, kind))
            return (cudaError_t.cudaSuccess,)
        return (self._copy(dst, src, count, kind),)

    def _copy(self, dst: int, src: int, count: int, kind: cudaMemcpyKind) -> cudaError_t:
        d_dev = kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        s_dev = kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        source = self.locate(src, count) if s_dev else None
        target = self.locate(dst, count) if d_dev else None
        if (s_dev and source is None) or (d_dev and target is None):
            return cudaError_t.cudaErrorInvalidValue
        if (not s_dev and self.locate(src, 1) is not None) or (not d_dev and self.locate(dst, 1) is not None):
            return cudaError_t.cudaErrorInvalidValue  # a device pointer where the kind says host
        data = source.tobytes() if s_dev else ctypes.string_at(src, count)
        if d_dev:
            target[:] = np.frombuffer(data, dtype=np.uint8)
        else:
            ctypes.memmove(dst, data, count)
        return cudaError_t.cudaSuccess

    # streams and graphs
    def cudaStreamCreateWithFlags(self, flags):
        stream = self._handle()
        self.streams.add(int(stream))
        return (cudaError_t.cudaSuccess, stream)

    def cudaStreamDestroy(self, stream):
        if int(stream) not in self.streams:  # destroyed twice, or never created
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        self.streams.remove(int(stream))
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):
        cap = self.captures.get(int(stream))
        if cap is not None:
            cap.invalid = "cudaStreamSynchronize during capture"
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):
        if int(stream) in self.captures:
            return (cudaError_t.cudaErrorIllegalState,)
        self.captures[int(stream)] = Capture(threading.get_ident())
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):
        cap = self.captures.pop(int(stream), None)
        if cap is None:
            return (cudaError_t.cudaErrorIllegalState, None)
        if cap.invalid:
            return (cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        graph = self._handle()
        self.graphs[int(graph)] = cap.nodes
        self.counts["captures"] += 1
        return (cudaError_t.cudaSuccess, graph)

    def cudaGraphInstantiate(self, graph, flags):
        if int(graph) not in self.graphs:
            return (cudaError_t.cudaErrorInvalidValue, None)
        exec_ = self._handle()
        self.execs[int(exec_)] = list(self.graphs[int(graph)])
        return (cudaError_t.cudaSuccess, exec_)

    def cudaGraphLaunch(self, graphExec, stream):
        nodes = self.execs.get(int(graphExec))
        if nodes is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.counts["launches"] += 1
        for node in nodes:
            if node[0] == "copy":
                err = self._copy(*node[1:])
            else:
                err = node[1]()
            if err != cudaError_t.cudaSuccess:
                return (err,)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphExecDestroy(self, graphExec):
        found = self.execs.pop(int(graphExec), None) is not None
        return (cudaError_t.cudaSuccess if found else cudaError_t.cudaErrorInvalidValue,)

    def cudaGraphDestroy(self, graph):
        found = self.graphs.pop(int(graph), None) is not None
        return (cudaError_t.cudaSuccess if found else cudaError_t.cudaErrorInvalidValue,)

    # events and device
    def cudaEventCreate(self):
        event = self._handle()
        self.events.add(int(event))
        return (cudaError_t.cudaSuccess, event)

    def cudaEventRecord(self, event, stream):
        return (cudaError_t.cudaSuccess,)

    def cudaEventSynchronize(self, event):
        return (cudaError_t.cudaSuccess,)

    def cudaEventElapsedTime(self, start, end):
        return (cudaError_t.cudaSuccess, 0.0)

    def cudaEventDestroy(self, event):
        if int(event) not in self.events:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.events.remove(int(event))
        return (cudaError_t.cudaSuccess,)

    def cudaGetDevice(self):
        return (cudaError_t.cudaSuccess, 0)

    def cudaGetDeviceProperties(self, device):
        if not isinstance(device, int):  # the binding's parameter is a C int
            raise TypeError("an integer is required")
        return (cudaError_t.cudaSuccess, types.SimpleNamespace(name=b"Stand-in GPU\x00", major=8, minor=7))

    def cudaDriverGetVersion(self):
        return (cudaError_t.cudaSuccess, 12060)

    def cudaRuntimeGetVersion(self):
        return (cudaError_t.cudaSuccess, 12060)

    # the per-thread error state: every failing call sets it; these read it
    def cudaGetLastError(self):
        err, self.last_error = self.last_error, cudaError_t.cudaSuccess
        return (err,)

    def cudaPeekAtLastError(self):
        return (self.last_error,)


def _recording_errors(fn):
    def call(self, *args):
        result = fn(self, *args)
        if result[0] != cudaError_t.cudaSuccess:
            self.last_error = cudaError_t(result[0])
        return result

    call.__name__, call.__wrapped__ = fn.__name__, fn
    return call


for _name, _fn in list(vars(StandInCudart).items()):
    reads_error = _name in ("cudaGetLastError", "cudaPeekAtLastError")
    if _name.startswith("cuda") and inspect.isfunction(_fn) and not reads_error:
        setattr(StandInCudart, _name, _recording_errors(_fn))


# -- TensorRT runtime -------------------------------------------------------------------------------------------
def make_plan(onnx_bytes: bytes, shapes: dict, version: str, device_memory: int, capturable: bool = True) -> bytes:
    header = json.dumps({"tensorrt": version, "shapes": shapes, "device_memory": device_memory,
                         "capturable": capturable}, default=list).encode()
    return PLAN_MAGIC + len(header).to_bytes(4, "little") + header + onnx_bytes


def stand_in_tensorrt(version: str, cudart: StandInCudart) -> types.ModuleType:
    v = tuple(int(p) for p in version.split(".")[:2])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    trt.DataType = enum.Enum("DataType", "FLOAT HALF INT32 INT64 BOOL")
    trt.ExecutionContextAllocationStrategy = enum.Enum("ExecutionContextAllocationStrategy",
                                                       "STATIC ON_PROFILE_CHANGE USER_MANAGED")
    numpy_of = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT32: np.int32,
                trt.DataType.INT64: np.int64, trt.DataType.BOOL: np.bool_}
    trt.nptype = lambda dt: numpy_of[dt]
    trt.float32, trt.float16, trt.int32, trt.int64 = (trt.DataType.FLOAT, trt.DataType.HALF, trt.DataType.INT32,
                                                      trt.DataType.INT64)
    trt_of = {np.dtype(t): d for d, t in numpy_of.items()}
    # the builder side (network creation flags included) is trt_builder_stand_in.add_builder_api's

    class Logger:
        WARNING, ERROR, INFO = 2, 1, 3

        def __init__(self, severity=2):
            self.severity = severity

    class Engine:
        def __init__(self, header: dict, onnx_bytes: bytes):
            import onnxruntime as ort

            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.header = header
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            types_ = {t.name: t.type for t in (*self.session.get_inputs(), *self.session.get_outputs())}
            onnx_np = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
            self.dtypes = {n: trt_of[np.dtype(onnx_np[t])] for n, t in types_.items()}
            self.contexts, self.shape_cache = [], {}
            if v < (11, 0):
                self.device_memory_size = header["device_memory"]
            if v >= (10, 1):
                self.device_memory_size_v2 = header["device_memory"]

        @property
        def num_io_tensors(self):
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i):
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name):
            if name in self.inputs:
                return trt.TensorIOMode.INPUT
            return trt.TensorIOMode.OUTPUT if name in self.outputs else trt.TensorIOMode.NONE

        def get_tensor_dtype(self, name):
            return self.dtypes[name]

        def get_tensor_profile_shape(self, name, profile_index):
            if name not in self.inputs or profile_index != 0:
                raise RuntimeError(f"no profile shape for {name} in profile {profile_index}")
            return [tuple(s) for s in self.header["shapes"][name]]

        def create_execution_context(self, strategy=trt.ExecutionContextAllocationStrategy.STATIC):
            ctx = Context(self, strategy)
            self.contexts.append(ctx)
            return ctx

    class Context:
        def __init__(self, engine: Engine, strategy):
            self.engine, self.strategy = engine, strategy
            self.shapes, self.addresses = {}, {}
            self.memory = (0, 0)
            self.executions = 0

        # device memory: a property up to 10.x, set_device_memory(ptr, size) from 10.1
        if v < (11, 0):
            @property
            def device_memory(self):
                return self.memory[0]

            @device_memory.setter
            def device_memory(self, ptr):
                self.memory = (int(ptr), self.engine.header["device_memory"])

        if v >= (10, 1):
            def set_device_memory(self, ptr, size):
                if size < self.engine.header["device_memory"]:
                    raise ValueError("device memory smaller than the engine needs")
                self.memory = (int(ptr), int(size))

        def set_input_shape(self, name, shape):
            if name not in self.engine.inputs:
                return False
            lo, _, hi = self.engine.header["shapes"][name]
            shape = tuple(shape)
            if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            if name in self.engine.inputs:
                return self.shapes.get(name, tuple(-1 for _ in self.engine.header["shapes"][name][0]))
            if set(self.shapes) != set(self.engine.inputs):
                return (-1,)
            return self._output_shapes()[name]

        def _output_shapes(self) -> dict:
            key = tuple(sorted(self.shapes.items()))
            if key not in self.engine.shape_cache:  # shape inference, the stand-in's way: run once on zeros
                feeds = {n: np.zeros(s, dtype=trt.nptype(self.engine.dtypes[n])) for n, s in self.shapes.items()}
                outs = self.engine.session.run(None, feeds)
                self.engine.shape_cache[key] = {n: o.shape for n, o in zip(self.engine.outputs, outs, strict=True)}
            return self.engine.shape_cache[key]

        def set_tensor_address(self, name, ptr):
            if name not in self.engine.inputs + self.engine.outputs or int(ptr) % ALIGN:
                return False
            self.addresses[name] = int(ptr)
            return True

        def execute_async_v3(self, stream_handle):
            if type(stream_handle) is not int:  # the binding's parameter is an int; cuda-python handles need int()
                raise TypeError("execute_async_v3(): incompatible function arguments: "
                                f"stream_handle {type(stream_handle)}")
            if cudart.last_error != cudaError_t.cudaSuccess:
                # TensorRT checks the CUDA error state around its launches: an error left pending by an earlier
                # call (a failed capture) fails this enqueue. trtexec clears it with cudaGetLastError.
                return False
            if set(self.shapes) != set(self.engine.inputs):
                return False
            if set(self.addresses) != set(self.engine.inputs + self.engine.outputs):
                return False
            if self.strategy == trt.ExecutionContextAllocationStrategy.USER_MANAGED:
                ptr, size = self.memory
                if not ptr or size < self.engine.header["device_memory"] or cudart.locate(ptr, size) is None:
                    return False
            shapes, addresses = dict(self.shapes), dict(self.addresses)
            cap = cudart.captures.get(stream_handle)
            if cap is not None:
                if not self.engine.header["capturable"]:
                    cap.invalid = "this engine's enqueue cannot be captured"
                    return False
                cap.nodes.append(("execute", lambda: self._execute(shapes, addresses)))
                return True
            return self._execute(shapes, addresses) == cudaError_t.cudaSuccess

        def _execute(self, shapes: dict, addresses: dict) -> cudaError_t:
            self.executions += 1
            feeds = {}
            for n in self.engine.inputs:
                dtype = np.dtype(trt.nptype(self.engine.dtypes[n]))
                raw = cudart.locate(addresses[n], int(np.prod(shapes[n])) * dtype.itemsize)
                if raw is None:
                    return cudaError_t.cudaErrorInvalidValue
                feeds[n] = raw.view(dtype).reshape(shapes[n]).copy()
            outs = self.engine.session.run(None, feeds)
            for n, out in zip(self.engine.outputs, outs, strict=True):
                out = np.ascontiguousarray(out, dtype=trt.nptype(self.engine.dtypes[n]))
                raw = cudart.locate(addresses[n], out.nbytes)
                if raw is None:
                    return cudaError_t.cudaErrorInvalidValue
                raw[:] = out.view(np.uint8).reshape(-1)
            if self.memory[0]:  # activations are scratch: nothing may rely on them between executions
                scratch = cudart.locate(*self.memory)
                scratch[:] = np.random.default_rng(self.executions).integers(0, 256, scratch.size, dtype=np.uint8)
            return cudaError_t.cudaSuccess

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            plan = bytes(plan)
            if not plan.startswith(PLAN_MAGIC):
                return None
            n = int.from_bytes(plan[len(PLAN_MAGIC):len(PLAN_MAGIC) + 4], "little")
            start = len(PLAN_MAGIC) + 4
            header = json.loads(plan[start:start + n])
            if header["tensorrt"] != version:  # plans are specific to the TensorRT version that built them
                return None
            return Engine(header, plan[start + n:])

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt
