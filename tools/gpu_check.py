"""The prepared GPU check: everything a CUDA machine without TensorRT can verify, in one command.

    PYTHONPATH=. python tools/gpu_check.py --out DIR [--quick] [--artifacts TINY_EXPORT]

Writes DIR/gpu_check.json and DIR/gpu_check.md. Each check passes, fails (with its error) or is skipped with the
reason its requirement is missing, so the same command runs on a CPU machine (every check skipped; CI runs it)
and on a GPU (every check should pass). Exit 1 when a check failed, else 0. Sized for one device session
(3 minutes with --quick on an H200, from cold Triton and torch.compile caches); --quick shortens the timings.

Each check runs in its own process, stopped after its LIMITS: a CUDA fault is sticky for the process that met it
(a first run on an H200 lost every check after one), and a crash or hang ends that check alone. Where Triton's
own ptxas is below the floor measured for the GPU (dbunet.plugins.aot.SOUND_ASSEMBLER: Triton 3.6's 12.8 on
sm_90), the checks assemble with a CUDA toolkit's ptxas through TRITON_PTXAS_PATH, and the report says which.

  op_table       the Triton kernels (TRITON_INTERPRET=0) against their references, FP32 and FP16, every case, and
                 the launch configurations only Triton's own launcher takes (over 48 KB of shared memory)
  aot_ptx        the PTX exactly as the TensorRT plugins return it (ISA pinned for this driver and this Triton),
                 loaded with the CUDA driver API and launched with TensorRT's argument order (inputs, int32
                 scalars, outputs) and the launch parameters aot_impl computes, against the op table's reference:
                 its cases, then one per launch configuration the plugins compile (sd15's head sizes included)
  assembler_floor  with Triton's own ptxas: where it is below the floor, the JIT launcher refuses, and the FP16
                 attention cases launched past the refusal give the errors it prevents
  cuda_layer     --backend trt's CUDA layer on the device: allocations, copies of every kind, a thread-local
                 capture of copies and a kernel standing in for execute_async_v3, instantiate, launch, events,
                 the failed-capture fallback; StepLoop's whole-loop graph against per-step launches
  fused_ops      the kernels against their references at sd15 shapes (FP16), and fused BoxConstraint / SCA timed
                 against eager and torch.compile, the three in alternating rounds
  ort_attention  where onnxruntime-gpu is installed: one attention at sd15 512x512 (2 x 8 heads x 4096 tokens x 40)
                 as exported vs rewritten into MultiHeadAttention (dbunet.onnx_attention) on the CUDA provider,
                 FP32 and FP16: the outputs agree, time of each, device memory each run takes
  ort_loop       where onnxruntime-gpu is installed and --artifacts names a tiny preset export (FP32 and FP16):
                 dbunet-run's ONNX Runtime path on the CUDA provider, per-step runs vs the whole loop with its
                 tensors on the device and one CUDA graph per buffer parity (dbunet.runtime.backends.ort_loop):
                 the latents agree, denoising time of each, whether ONNX Runtime accepted the CUDA graphs
  torch_pipeline the shapes demo model (the README's main job) through TorchPipeline on the GPU, FP32 with TF32
                 off, eager and with the Triton kernels, against the same pipeline on the CPU over held-out layouts:
                 every image within 3 uint8 levels, and benchmarks/quality.py's box scores of each (needs diffusers,
                 transformers and jsonschema)
  torch_step     the DB-UNet guided step at the sd15 preset, 512x512, FP16 on CUDA: eager, torch.compile,
                 eager with the Triton kernels, in alternating rounds (the kernels switched per round: TorchPipeline's
                 denoise_step calls this module; torch_pipeline runs the whole pipeline)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Skip(Exception):
    """A requirement of the check is missing here: the message says which."""


# -- requirements ------------------------------------------------------------------------------------------------
def need_torch_cuda():
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed") from None
    if not torch.cuda.is_available():
        raise Skip("no CUDA device (torch.cuda.is_available() is False)")
    return torch


def need_triton():
    try:
        import triton
    except ImportError:
        raise Skip("triton is not installed") from None
    return triton


def need_cuda_bindings():
    from dbunet.cuda_runtime import current_device
    from dbunet.errors import CudaError

    try:
        return current_device()
    except CudaError as exc:
        raise Skip(str(exc)) from None


def gpu_timing(fn: Callable[[], object], repeat: int, warmup: int = 3) -> float:
    """Median milliseconds of `fn` by CUDA events, after warm-up (the first call in a process loads the GPU first)."""
    import torch

    spin_up()
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


@functools.cache
def spin_up(seconds: float = 1.0) -> None:
    """Keep the GPU busy for `seconds` before the first timing: an idle H200 read 345 MHz, and the first figures of a
    run came in slower than the same figures later."""
    import torch

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


class Tally:
    """Worst error per op and dtype against the op table's fp32 reference; every case beyond its bound."""

    def __init__(self) -> None:
        self.worst, self.failures = {}, []

    def add(self, case, dtype, got, inputs) -> None:
        import torch

        from dbunet.plugins.table import TOLERANCE, max_rel_error, reference_fp32

        want = reference_fp32(case.op, tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in inputs))
        err = max_rel_error(got.cpu(), want) if torch.isfinite(got).all() else float("inf")
        key = f"{case.op}/{str(dtype).split('.')[-1]}"
        self.worst[key] = max(self.worst.get(key, 0.0), err)
        if err > TOLERANCE[dtype]:
            self.failures.append(f"{case.op} [{case.label}] {key}: {err:.2e} > {TOLERANCE[dtype]:.0e}")

    def result(self) -> dict:
        if self.failures:
            raise AssertionError("; ".join(self.failures))
        return self.worst


# -- op_table ----------------------------------------------------------------------------------------------------
def check_op_table(args) -> dict:
    torch = need_torch_cuda()
    need_triton()
    from dbunet.plugins.table import CASES, DTYPES, fused, opt_in_cases

    tally = Tally()
    # every case in both dtypes, then the configurations only this launcher takes (over 48 KB of shared memory)
    cases = [(dtype, case) for dtype in (torch.float32, torch.float16) for case in CASES]
    cases += [(DTYPES[name], case) for name, case in opt_in_cases()]
    for dtype, case in cases:
        inputs = case.make(torch.Generator().manual_seed(case.seed), dtype, "cuda")
        with naming(case, dtype):
            got = fused(case.op)(*inputs)
            torch.cuda.synchronize()  # a fault surfaces here, under this case's name
        tally.add(case, dtype, got, inputs)
    return {"cases": len(cases), "max_rel_error": tally.result()}


@contextlib.contextmanager
def naming(case, dtype):
    """An error inside re-raised with the case it happened in (a CUDA fault names no kernel)."""
    try:
        yield
    except Exception as exc:
        raise RuntimeError(f"{case.op} [{case.label}] {str(dtype).split('.')[-1]}: {type(exc).__name__}: {exc}") \
            from exc


# -- aot_ptx -----------------------------------------------------------------------------------------------------
class ConcreteLaunch:
    """tensorrt.plugin's KernelLaunchParams with concrete numbers, so the plugins' own launch functions
    (box_constraint_launch, spatial_attention_launch) compute the launch for real shapes."""

    def __init__(self) -> None:
        self.grid_x = self.grid_y = self.grid_z = self.block_x = self.block_y = self.block_z = 1
        self.shared_mem = 0


class ConcreteShapes:
    KernelLaunchParams = ConcreteLaunch
    SymInt32 = int

    class SymIntExprs:
        from_tuple = staticmethod(tuple)

    @staticmethod
    def cdiv(a: int, b: int) -> int:
        return -(-int(a) // int(b))


class Desc:
    def __init__(self, tensor) -> None:
        self.shape_expr = tuple(int(d) for d in tensor.shape)


def plugin_launch(case, inputs, kernel_for: Callable) -> tuple:
    """An op-table case as its TensorRT plugin launches it: (compiled kernel, launch parameters, int32 scalars,
    contiguous inputs in the plugin's order, an empty output). `kernel_for(kernel, **shape)` gives the
    CompiledKernel: its PTX on a GPU, its configuration alone where the kernel runs under Triton's interpreter."""
    import torch

    from dbunet.plugins.tensorrt_plugins import box_constraint_launch, spatial_attention_launch

    if case.op == "box_constraint":
        x, q, k, v, boxes, valid, gate = inputs
        compiled = kernel_for("box_constraint", slots=k.shape[1])
        launch, scalars = box_constraint_launch(ConcreteShapes, compiled, Desc(x), Desc(q), Desc(boxes))
        tensors_in, out = [x, q, k, v, boxes, valid, gate.reshape(1)], torch.empty_like(x)
    else:
        q, k, v, heads = inputs
        compiled = kernel_for("spatial_attention", dk=q.shape[2] // heads, dv=v.shape[2] // heads)
        launch, scalars = spatial_attention_launch(ConcreteShapes, compiled, Desc(q), Desc(v), heads)
        tensors_in, out = [q, k, v], torch.empty_like(v)
    return compiled, launch, scalars, [t.contiguous() for t in tensors_in], out


def launch_ptx(driver, compiled, launch, pointers_in, scalars, pointers_out, stream: int) -> None:
    """cuModuleLoadData + cuLaunchKernel with TensorRT's AOT argument order: inputs, int32 scalars, outputs."""
    import numpy as np

    def ok(result):
        err = result[0]
        if int(err):
            raise RuntimeError(f"CUDA driver: {err!r}")
        return result[1] if len(result) > 1 else None

    image = np.frombuffer(compiled.ptx.encode() + b"\0", dtype=np.uint8)  # NUL-terminated PTX text
    module = ok(driver.cuModuleLoadData(image.ctypes.data))
    try:
        function = ok(driver.cuModuleGetFunction(module, compiled.name.encode()))
        values = ([np.array([p], dtype=np.uint64) for p in pointers_in]
                  + [np.array([s], dtype=np.int32) for s in scalars]
                  + [np.array([p], dtype=np.uint64) for p in pointers_out])
        params = np.array([v.ctypes.data for v in values], dtype=np.uint64)
        ok(driver.cuLaunchKernel(function, launch.grid_x, launch.grid_y, launch.grid_z, launch.block_x,
                                 launch.block_y, launch.block_z, launch.shared_mem, stream, params.ctypes.data, 0))
        ok(driver.cuStreamSynchronize(stream))
    finally:
        driver.cuModuleUnload(module)


def check_aot_ptx(args) -> dict:
    torch = need_torch_cuda()
    need_triton()
    device = need_cuda_bindings()
    from cuda.bindings import driver

    from dbunet.plugins import aot
    from dbunet.plugins.table import CASES, DTYPES, aot_cases
    from dbunet.plugins.tensorrt_plugins import plugin_kernel

    cc = device.compute_capability
    if cc not in aot.TARGETS.values():
        raise Skip(f"sm_{cc} is not a PTX target of the plugins ({', '.join(aot.TARGETS)})")
    torch.cuda.init()
    stream = torch.cuda.current_stream().cuda_stream
    tally = Tally()
    # the op table (CCA has no plugin: TensorRT runs its local function), then every launch configuration the
    # plugins compile, at head sizes or box slots that select it (the sd15 ones included)
    cases = [(name, case) for name in ("fp16", "fp32") for case in CASES if case.op != "channel_cross_attention"]
    cases += aot_cases()
    for name, case in cases:
        dtype = DTYPES[name]
        inputs = case.make(torch.Generator().manual_seed(case.seed), dtype, "cuda")
        compiled, launch, scalars, tensors_in, out = plugin_launch(
            case, inputs, functools.partial(plugin_kernel, dtype=name, cc=cc, driver_cuda=device.driver_cuda))
        with naming(case, dtype):
            launch_ptx(driver, compiled, launch, [t.data_ptr() for t in tensors_in], scalars, [out.data_ptr()],
                       stream)
        tally.add(case, dtype, out, inputs)
    isa = aot.target_isa(cc, device.driver_cuda)
    return {"target": f"sm_{cc}", "driver_cuda": device.driver_cuda, "ptx_isa": f"{isa[0]}.{isa[1]}",
            "ptxas": aot.triton_ptxas(cc).release, "cases": len(cases),
            "max_rel_error": tally.result()}


# -- assembler_floor ---------------------------------------------------------------------------------------------
def check_assembler_floor(args) -> dict:
    """Run with Triton's own ptxas (the parent's TRITON_PTXAS_PATH removed): where it is below the floor for this
    GPU (aot.SOUND_ASSEMBLER), the launcher must refuse; the op table's FP16 attention cases are then launched past
    the refusal, and their errors are the figures that show why it exists."""
    torch = need_torch_cuda()
    need_triton()
    from dbunet.errors import BuildError
    from dbunet.plugins import aot, launch
    from dbunet.plugins.table import CASES, TOLERANCE, fused, max_rel_error, reference_fp32

    major, minor = torch.cuda.get_device_capability()
    cc = major * 10 + minor
    floor = aot.SOUND_ASSEMBLER.get(cc)
    if not floor:
        raise Skip(f"no assembler floor for sm_{cc}")
    least = floor.least
    ptxas = aot.triton_ptxas(cc)
    below = aot.cuda_release(ptxas.release) < least
    cases = [case for case in CASES if case.op == "spatial_cross_attention"]
    figures = {"ptxas": ptxas.release, "floor": ".".join(map(str, least)), "refused": False, "errors": {}}
    first = cases[0].make(torch.Generator().manual_seed(cases[0].seed), torch.float16, "cuda")
    try:
        launch.spatial_cross_attention(*first)
    except BuildError as exc:
        figures["refused"] = True
        figures["refusal"] = str(exc)[:160]
    assert figures["refused"] == below, f"ptxas {ptxas.release}, floor {least}: refused = {figures['refused']}"
    launch.require_sound_ptxas = lambda cc: None  # past the refusal: what it prevents
    for case in cases:
        inputs = case.make(torch.Generator().manual_seed(case.seed), torch.float16, "cuda")
        try:
            got = fused(case.op)(*inputs)
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 -- a fault ends the process's use of the device: the figure
            figures["errors"][case.label] = f"{type(exc).__name__}: {str(exc)[:80]}"
            break
        want = reference_fp32(case.op, tuple(a.cpu() if isinstance(a, torch.Tensor) else a for a in inputs))
        err = max_rel_error(got.cpu(), want) if torch.isfinite(got).all() else float("inf")
        figures["errors"][case.label] = err
        if not below:
            assert err <= TOLERANCE[torch.float16], f"{case.label}: {err:.2e} with ptxas {ptxas.release}"
    return figures


# -- cuda_layer --------------------------------------------------------------------------------------------------
class TorchEngine:
    """A stand-in for a TensorRT step engine on the real GPU (TensorRT is not installed there): the TensorRT
    calls EngineRunner and StepLoop make, with an enqueue that launches real kernels on the given stream over
    the bound device addresses. x0 = c0 x + c1 cond; x_next = c2 x + c3 x0 + c4 x0_prev."""

    INPUTS, OUTPUTS = ("x", "x0_prev", "coeffs", "cond"), ("x_next", "x0")

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.num_io_tensors = 6

    def get_tensor_name(self, i: int) -> str:
        return (*self.INPUTS, *self.OUTPUTS)[i]

    def get_tensor_mode(self, name: str):
        return "in" if name in self.INPUTS else "out"

    def get_tensor_dtype(self, name: str):
        return "float32"

    def get_tensor_profile_shape(self, name: str, index: int):
        return [self.shape_of(name)] * 3

    def shape_of(self, name: str) -> tuple[int, ...]:
        return (5,) if name == "coeffs" else self.shape

    device_memory_size_v2 = 256

    def create_execution_context(self, strategy):
        return TorchContext(self)


class TorchContext:
    def __init__(self, engine: TorchEngine) -> None:
        self.engine, self.addresses = engine, {}
        self.views = {}  # (name, address) -> tensor: made on the direct run, reused inside captures

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.memory = (ptr, size)

    def set_input_shape(self, name: str, shape) -> bool:
        return tuple(shape) == self.engine.shape_of(name)

    def get_tensor_shape(self, name: str):
        return self.engine.shape_of(name)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        import torch

        t = {}
        for n, p in self.addresses.items():
            if (n, p) not in self.views:
                self.views[n, p] = tensor_at(p, self.engine.shape_of(n))
            t[n] = self.views[n, p]
        c = t["coeffs"]
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):  # kernels only: nothing allocates in a capture
            torch.mul(t["x"], c[0:1], out=t["x0"])
            torch.addcmul(t["x0"], t["cond"], c[1:2], out=t["x0"])
            torch.mul(t["x"], c[2:3], out=t["x_next"])
            torch.addcmul(t["x_next"], t["x0"], c[3:4], out=t["x_next"])
            torch.addcmul(t["x_next"], t["x0_prev"], c[4:5], out=t["x_next"])
        return True


def tensor_at(ptr: int, shape: tuple[int, ...]):
    """A float32 torch view of device memory at `ptr` (no copy), through the CUDA array interface."""
    import torch

    class View:
        __cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (ptr, False), "version": 3,
                                    "strides": None}

    return torch.as_tensor(View(), device="cuda")


class TorchTrt:
    """The two TensorRT names EngineRunner reads from the module."""

    class TensorIOMode:
        INPUT = "in"

    class ExecutionContextAllocationStrategy:
        USER_MANAGED = "user"

    @staticmethod
    def nptype(dtype):
        import numpy as np

        return np.float32


def check_cuda_layer(args) -> dict:
    torch = need_torch_cuda()
    need_cuda_bindings()
    import numpy as np

    from dbunet.errors import CudaError
    from dbunet.runtime.backends.cuda import Cuda
    from dbunet.runtime.backends.trt_engine import ActivationRegion, EngineRunner, StepLoop, capture

    torch.cuda.init()
    cuda = Cuda()
    facts = {}
    try:
        host = np.arange(4096, dtype=np.float32)
        a, b = cuda.malloc(host.nbytes), cuda.malloc(host.nbytes)
        cuda.upload(a, host)  # host to device
        cuda.copy(b, a, host.nbytes)  # device to device
        assert np.array_equal(cuda.download(b, host.shape, host.dtype), host), "copies round trip"
        facts["memory_in_use_mb"] = round(cuda.memory_in_use() / 2**20, 1)

        # a thread-local capture of a copy and a kernel on our stream, instantiated and launched twice
        dst = tensor_at(b, host.shape)

        def record() -> None:
            cuda.copy(b, a, host.nbytes)
            with torch.cuda.stream(torch.cuda.ExternalStream(int(cuda.stream))):
                torch.mul(dst, 2.0, out=dst)

        record()  # once directly first, as EngineRunner.launch does: the kernel's module loads outside the capture
        graph = capture(cuda, record)
        cuda.upload(b, np.zeros_like(host))  # what the graph's copy and kernel must overwrite
        for _ in range(2):
            graph.launch()
        assert np.array_equal(cuda.download(b, host.shape, host.dtype), host * 2), "graph replays copy + kernel"
        graph.destroy()
        start, end = cuda.event(), cuda.event()
        cuda.record(start)
        torch.cuda.synchronize()
        graph = capture(cuda, record)
        cuda.record(start)
        for _ in range(100):
            graph.launch()
        cuda.record(end)
        facts["graph_launch_us"] = round(cuda.elapsed_ms(start, end) * 10, 2)  # ms per 100 -> us per launch
        cuda.destroy_event(start)
        cuda.destroy_event(end)
        graph.destroy()

        # a capture that fails (cudaMalloc is not permitted in one) leaves the stream usable, no error pending
        try:
            capture(cuda, lambda: cuda.malloc(1024))
            raise AssertionError("cudaMalloc inside a capture was accepted")
        except CudaError as exc:
            facts["failed_capture"] = str(exc)[:120]
        assert int(cuda.rt.cudaPeekAtLastError()[0]) == 0, "an error is still pending after the failed capture"
        cuda.copy(b, a, host.nbytes)
        assert np.array_equal(cuda.download(b, host.shape, host.dtype), host), "stream usable after the failure"
        cuda.free(a)
        cuda.free(b)

        # StepLoop: one graph for the whole loop against per-step launches, on the real device
        shape = (2, 4, 64, 64)
        rng = np.random.default_rng(0)
        rows = rng.uniform(0.2, 0.9, (20, 5)).astype(np.float32)
        x = rng.standard_normal(shape).astype(np.float32)
        cond = {"cond": rng.standard_normal(shape).astype(np.float32)}
        latents = {}
        for label, graphs in (("graph", True), ("per_step", False)):
            runner = EngineRunner(TorchTrt, cuda, TorchEngine(shape), "step")
            region = ActivationRegion(cuda)
            region.attach(runner)
            runner.use_graphs = graphs
            loop = StepLoop(runner)
            for _ in range(2):  # the first run records directly and captures; the second replays
                latents[label] = loop.run(rows, x, cond)
            facts[f"{label}_issue_ms"] = round(loop.issue_s * 1000, 3)
            runner.close()
            region.free()
        want = x
        x0_prev = np.zeros_like(x)
        for c in rows:  # the same update on the host, in float64
            x0 = c[0] * want + c[1] * cond["cond"]
            want, x0_prev = c[2] * want + c[3] * x0 + c[4] * x0_prev, x0
        assert np.array_equal(latents["graph"], latents["per_step"]), "whole-loop graph differs from per-step"
        err = float(np.abs(latents["graph"] - want).max() / np.abs(want).max())
        assert err < 1e-5, f"loop result off the host computation by {err:.1e}"
        facts["loop_rel_error"] = err
    finally:
        cuda.close()
    return facts


# -- torch_step and fused_ops ------------------------------------------------------------------------------------
def guided_step_of(cfg, side: int, boxes: int, device: str, dtype) -> Callable:
    """guided_step_of(...)(model) -> a callable running what TorchStages.denoise_step runs for one guided step:
    the DB-UNet on the CFG batch of 2 (latent side x side, `boxes` boxes), then the guidance."""
    import torch

    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype)

    d = cfg.unet.cross_attention_dim
    latent, text = rnd(1, cfg.unet.in_channels, side, side), rnd(2, 77, d)
    box = torch.tensor([[0.1, 0.1, 0.6, 0.7]], device=device, dtype=dtype).expand(2, boxes, 4).contiguous()
    phrases, valid = rnd(2, boxes, d), torch.ones(2, boxes, device=device, dtype=dtype)
    t, scale = torch.tensor([500.0], device=device), torch.tensor(1.0, device=device, dtype=dtype)

    def of(model) -> Callable:
        def step():
            eps_u, eps_c = model(latent.expand(2, -1, -1, -1), t, text, box, phrases, valid, scale).chunk(2)
            return eps_u + 7.5 * (eps_c - eps_u)
        return step

    return of


# Levels (uint8) a CUDA image may differ from the CPU's: both FP32 with TF32 off, only the kernels' summation orders
# differ; on a CPU, ONNX Runtime's and PyTorch's images of the same requests were at most 1 level apart. A wrong
# kernel, mask or token is tens of levels off (Triton 3.6's misassembled FP16 attention: 0.68 of its range).
PIPELINE_LEVELS = 3
TORCH_PIPELINE_NEEDS = ("diffusers", "transformers", "jsonschema", "PIL")


def check_torch_pipeline(args) -> dict:
    """The shapes demo model (the README's main job) through TorchPipeline on the GPU in FP32, eager and with the
    Triton kernels, against the same pipeline on the CPU over held-out layouts: every image within PIPELINE_LEVELS,
    and the box scores of benchmarks/quality.py for each."""
    torch = need_torch_cuda()
    need_triton()
    missing = [m for m in TORCH_PIPELINE_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not installed (TorchPipeline's VAE and UNet blocks are diffusers'; "
                   "jsonschema checks the model's config)")
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from quality import Summary, held_out_layouts, score_image

    from dbunet.models.pipeline import TorchPipeline
    from dbunet.plugins.torch_ops import use_triton_kernels

    torch.backends.cudnn.allow_tf32 = False  # FP32 as the CPU computes it: TF32 convolutions round to 10 bits
    torch.backends.cuda.matmul.allow_tf32 = False
    preset = Path(__file__).resolve().parents[1] / "dbunet" / "presets" / "shapes"
    layouts = held_out_layouts(8 if args.quick else 32)

    def images(pipe) -> tuple[np.ndarray, float]:
        started, out = time.perf_counter(), []
        for i, layout in enumerate(layouts):
            out.append(pipe(layout.prompt, boxes=[b.spec() for b in layout.boxes], seed=i).image)
        return np.stack(out), (time.perf_counter() - started) / len(layouts)

    def scores(stack: np.ndarray) -> dict:
        summary = Summary.of([score_image(image, layout) for image, layout in zip(stack, layouts, strict=True)])
        return {"iou": round(summary.iou, 3), "color": round(summary.color, 3), "shape": round(summary.shape, 3)}

    cpu, cpu_s = images(TorchPipeline.from_pretrained(preset, "cpu"))
    figures = {"layouts": len(layouts), "precision": "fp32, TF32 off", "cpu": {"s_per_image": round(cpu_s, 3),
                                                                              **scores(cpu)}}
    gpu = TorchPipeline.from_pretrained(preset, "cuda")
    runs = {"cuda_eager": images(gpu)}
    use_triton_kernels("cuda")  # for the rest of the process: the same pipeline, its ops now the kernels
    runs["cuda_triton"] = images(gpu)
    failures = []
    for name, (stack, seconds) in runs.items():
        diff = np.abs(stack.astype(np.int16) - cpu.astype(np.int16))
        figures[name] = {"s_per_image": round(seconds, 3), "max_levels": int(diff.max()),
                         "mean_levels": round(float(diff.mean()), 4), **scores(stack)}
        if diff.max() > PIPELINE_LEVELS:
            failures.append(f"{name}: {int(diff.max())} levels from the CPU's images (at most {PIPELINE_LEVELS})")
    assert not failures, "; ".join(failures)
    return figures


def check_torch_step(args) -> dict:
    torch = need_torch_cuda()
    need_triton()
    from dbunet.config import sd15

    figures = torch_step(sd15(), "cuda", torch.float16, rounds=3 if args.quick else 5, repeat=5 if args.quick else 20,
                         timing=gpu_timing, compiler=torch.compile)
    figures["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return figures


def torch_step(cfg, device: str, dtype, rounds: int, repeat: int, timing: Callable, compiler: Callable,
               size: int = 512) -> dict:
    """The guided step at `size` x `size` eager, compiled and eager through the Triton kernels, the three timed in
    alternating rounds (medians of the rounds' medians), so a drift of the GPU's clocks hits each alike."""
    import torch

    from dbunet.models.dbunet import DBUNet
    from dbunet.plugins.torch_ops import use_triton_kernels

    side, boxes = size // cfg.vae.downscale, 4
    with torch.device(device):  # initialised on the device: seconds instead of a minute on the host
        unet = DBUNet(cfg.unet).to(dtype).eval()
    guided_step = guided_step_of(cfg, side, boxes, device, dtype)
    figures = {"latent": f"{side}x{side}", "boxes": boxes, "dtype": str(dtype).split(".")[-1], "batch": 2,
               "rounds": rounds, "repeat": repeat}
    device_type = torch.device(device).type
    with torch.no_grad():
        use_triton_kernels(device_type, enabled=False)  # registered for the process, switched per round below
        eager = guided_step(unet)
        reference = eager()
        started = time.perf_counter()
        compiled = guided_step(compiler(unet, dynamic=False))
        compiled()
        figures["compile_s"] = round(time.perf_counter() - started, 1)
        use_triton_kernels(device_type)
        out = eager()
        times = {"eager_ms": [], "compile_ms": [], "eager_triton_ms": []}
        for _ in range(rounds):
            for name, step, kernels in (("eager_ms", eager, False), ("compile_ms", compiled, False),
                                        ("eager_triton_ms", eager, True)):
                use_triton_kernels(device_type, enabled=kernels)
                times[name].append(timing(step, repeat))
        use_triton_kernels(device_type, enabled=False)
    figures |= {name: round(statistics.median(t), 3) for name, t in times.items()}
    figures["triton_over_eager"] = round(figures["eager_triton_ms"] / figures["eager_ms"], 3)
    rel = float((out.float() - reference.float()).abs().max() / reference.float().abs().max())
    figures["triton_vs_reference_max_rel"] = rel
    # per op the kernels stay within 5e-3 of the reference in FP16 (op table); through the whole UNet (random
    # weights) differences compound, so only a gross error (a wrong mask or a lost head) fails here
    assert torch.isfinite(reference).all() and torch.isfinite(out).all(), "the step is not finite"
    assert rel < 0.2, f"the Triton kernels change the step by {rel:.2e} of its range"
    return figures


def check_fused_ops(args) -> dict:
    torch = need_torch_cuda()
    need_triton()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from ops import sd15_cases

    from dbunet.plugins.table import REFERENCES, TOLERANCE, fused, max_rel_error, reference_fp32

    rounds, repeat = (3, 10) if args.quick else (5, 50)
    rows, failures = {}, []
    for op, tag, make in sd15_cases():
        a = make(torch.float16)
        ref, kernel = REFERENCES[op], fused(op)
        # the op table's bound at sd15's shapes (Triton's interpreter on a CPU: at most 5.7e-4 over these cases)
        err = max_rel_error(kernel(*a), reference_fp32(op, a))
        if not err <= TOLERANCE[torch.float16]:
            failures.append(f"{op} {tag}: {err:.2e} > {TOLERANCE[torch.float16]:.0e}")
        rows[f"{op} {tag}"] = {"max_rel_error": err}
        if op == "channel_cross_attention":
            continue  # no TensorRT plugin: checked, not timed (benchmarks/ops.py times it)
        compiled = torch.compile(ref, dynamic=False)
        calls = {"eager_ms": ref, "compile_ms": compiled, "fused_ms": kernel}
        times = {name: [] for name in calls}
        for _ in range(rounds):  # alternating, so a drift of the GPU's clocks hits each alike
            for name, f in calls.items():
                times[name].append(gpu_timing(functools.partial(f, *a), repeat))
        rows[f"{op} {tag}"] |= {name: round(statistics.median(t), 4) for name, t in times.items()}
    if failures:
        raise AssertionError("; ".join(failures))
    return {"dtype": "fp16", "batch": 2, "rounds": rounds, "repeat": repeat, "ops": rows}


ORT_PROVIDER = "CUDAExecutionProvider"
ORT_ATTENTION_SHAPE = (2, 8, 4096, 40)  # batch, heads, tokens, head size: sd15's first level at 512x512


def need_ort_provider():
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("onnxruntime is not installed") from None
    if ORT_PROVIDER not in ort.get_available_providers():
        raise Skip("onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)")
    from dbunet.runtime.backends.onnxruntime import CUDA, cuda_provider_problem

    # loads CUDA and cuDNN from the nvidia-* packages torch brought, as dbunet-run does; onnxruntime-gpu was carried
    # over to run here, so a provider that does not start fails the check (the tests run its body on the CPU's)
    problem = cuda_provider_problem() if ORT_PROVIDER == CUDA else None
    if problem:
        raise RuntimeError(problem)
    return ort


def check_ort_attention(args) -> dict:
    torch = need_torch_cuda()  # first: without a device onnxruntime-gpu's provider cannot start (a skip, no failure)
    ort = need_ort_provider()
    import tempfile

    import numpy as np
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from attention import attention_graph

    from dbunet.export.fp16 import to_fp16
    from dbunet.onnx_attention import fuse_attention

    b, h, s, d = ORT_ATTENTION_SHAPE
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal((b, s, h * d), dtype=np.float32) for name in ("q", "k", "v")}  # FP32 in
    # and out at both precisions: the FP16 graph casts inside (dbunet.export.fp16 keeps its IO types)
    repeat = 5 if args.quick else 20
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "attention.onnx"
        attention_graph(b, h, s, s, d, d, path)
        exported = onnx.load(str(path))
    for precision in ("fp32", "fp16"):
        base = exported if precision == "fp32" else to_fp16(exported, None)
        outs = {}
        for form in ("exported", "rewritten"):
            model = onnx.ModelProto()
            model.CopyFrom(base)
            if form == "rewritten":
                assert fuse_attention(model).total == 1
            free_before = torch.cuda.mem_get_info()[0]
            session = ort.InferenceSession(model.SerializeToString(), providers=[ORT_PROVIDER])
            # a provider that fails to load leaves a session on the CPU provider with only a logged warning
            assert session.get_providers()[0] == ORT_PROVIDER, f"the session runs on {session.get_providers()}"
            run = functools.partial(session.run, None, feeds)
            outs[form] = run()[0]
            seconds = statistics.median(_timed(run) for _ in range(repeat))
            figures[f"{precision}_{form}"] = {"ms": round(seconds * 1000, 3),
                                              "device_mb": round((free_before - torch.cuda.mem_get_info()[0]) / 2**20)}
            del session
        rel = float(np.abs(outs["rewritten"] - outs["exported"]).max() / np.abs(outs["exported"]).max())
        figures[f"{precision}_max_rel"] = rel
        bound = 1e-4 if precision == "fp32" else 2e-2
        assert rel < bound, f"{precision}: the rewritten attention differs by {rel:.2e}"
    return figures


ORT_LOOP_SIDE = 256  # the tiny preset's image side for ort_loop
PIPELINE_NEEDS = ("jsonschema", "tokenizers", "safetensors")  # what a Pipeline imports beyond numpy and onnx


def check_ort_loop(args) -> dict:
    torch = need_torch_cuda()  # for the device's free memory
    need_ort_provider()
    if args.artifacts is None:
        raise Skip("no --artifacts given (a tiny preset export: dbunet-export --config tiny --fp16)")
    missing = [m for m in PIPELINE_NEEDS if importlib.util.find_spec(m) is None]
    if missing:  # the GPU machine lacks jsonschema, which the runtime checks every manifest with
        raise Skip(f"the runtime's {', '.join(missing)} not installed (a dependency of dbunet's Pipeline)")
    import numpy as np

    from dbunet.runtime.backends.onnxruntime import OrtBackend
    from dbunet.runtime.pipeline import Pipeline

    device = "cuda" if ORT_PROVIDER == "CUDAExecutionProvider" else "cpu"
    request = {"prompt": "a red circle", "seed": 0, "height": ORT_LOOP_SIDE, "width": ORT_LOOP_SIDE,
               "boxes": ["0.1,0.1,0.6,0.6:a red circle"]}
    repeat = 3 if args.quick else 10
    figures = {}
    for precision in ("fp32", "fp16"):
        results, device_mb = {}, {}
        for form in ("steps", "loop"):  # one after the other: what each holds on the device after its images
            free_before = torch.cuda.mem_get_info()[0]
            pipe = Pipeline.from_artifacts(args.artifacts, OrtBackend(device, whole_loops=form == "loop"), precision)
            try:
                results[form] = [pipe(**request) for _ in range(repeat + 1)]  # +1 warm-up
                device_mb[form] = round((free_before - torch.cuda.mem_get_info()[0]) / 2**20)
                if form == "loop":
                    loops = pipe.stages.loops["dbunet_step"].describe()
            finally:
                pipe.close()
        want, got = results["steps"][-1], results["loop"][-1]
        rel = float(np.abs(got.latents - want.latents).max() / np.abs(want.latents).max())
        figures[precision] = {
            **{f"{form}_denoise_ms": round(statistics.median(r.timings["denoise"] for r in rs[1:]) * 1000, 3)
               for form, rs in results.items()},
            # the loop releases the session each step graph was loaded in: its weights are held once, not twice
            **{f"{form}_device_mb": mb for form, mb in device_mb.items()},
            "max_rel": rel, "steps": len(want.step_times), "loop_sessions": loops}
        # Not bit-equal: the pinned sessions pick their own kernels (TF32 and cuDNN's algorithms on the CUDA
        # provider). A wrong buffer, a stale input or a graph replaying freed memory differs by order 1.
        assert rel < 2e-2, f"{precision}: the whole loop's latents differ from the per-step ones by {rel:.2e}"
        assert all(s["device"] == device for s in loops.values()), loops
    return figures


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# The order they run in: the whole sd15 UNet through torch.compile takes longest and is last, so a run cut short
# by its time limit still has every other result (the report is saved after each check).
CHECKS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "op_table": check_op_table,
    "aot_ptx": check_aot_ptx,
    "assembler_floor": check_assembler_floor,
    "cuda_layer": check_cuda_layer,
    "fused_ops": check_fused_ops,
    "ort_attention": check_ort_attention,
    "ort_loop": check_ort_loop,
    "torch_pipeline": check_torch_pipeline,
    "torch_step": check_torch_step,
}


def environment() -> dict:
    env = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("torch", "triton", "numpy", "onnxruntime", "cupy"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 -- absent or broken: reported, not fatal
            env[name] = None
    from dbunet.cuda_runtime import bindings_version

    env["cuda_bindings"] = bindings_version()
    try:
        import torch

        env["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        env["torch_cuda"] = torch.version.cuda
    except ImportError:
        env["gpu"] = None
    return env


# Seconds a check may take before it is stopped and reported failed (an H200 takes a fraction of each)
LIMITS = {"op_table": 150, "aot_ptx": 180, "assembler_floor": 90, "cuda_layer": 60, "fused_ops": 240,
          "ort_attention": 180, "ort_loop": 300, "torch_pipeline": 240, "torch_step": 360}
PTXAS_ENV = "TRITON_PTXAS_PATH"  # Triton's own override of its bundled ptxas (below sm_100 in Triton 3.6 to 3.8)


def run_check(name: str, args) -> dict:
    """One check in this process: passed with its figures, skipped with the reason, or failed with the error."""
    started = time.perf_counter()
    try:
        entry = {"status": "passed", "figures": CHECKS[name](args)}
    except Skip as exc:
        entry = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 -- a failed check is reported and the next one runs
        entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc()[-4000:]}
    entry["seconds"] = round(time.perf_counter() - started, 2)
    return entry


def in_own_process(name: str, args, env: dict) -> dict:
    """One check in a child process: a CUDA fault is sticky for the process that met it, so it ends that check
    alone; so do a crash and a hang (LIMITS)."""
    import subprocess
    import tempfile

    if name == "assembler_floor":  # it is about Triton's own ptxas
        env = {k: v for k, v in env.items() if k != PTXAS_ENV}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--out", str(args.out), "--child", name,
                   "--result", str(result), *(["--quick"] if args.quick else []),
                   *(["--artifacts", str(args.artifacts)] if args.artifacts else [])]
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=LIMITS[name])
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"did not finish in {LIMITS[name]} s",
                    "seconds": round(time.perf_counter() - started, 2)}
        if result.is_file():
            return json.loads(result.read_text())
        return {"status": "failed", "error": f"its process ended with exit status {proc.returncode} and no result",
                "traceback": (proc.stdout + proc.stderr)[-4000:], "seconds": round(time.perf_counter() - started, 2)}


def sound_ptxas() -> dict:
    """For this GPU, the ptxas the checks' processes should assemble with (pick_ptxas); {} where there is no device,
    Triton or torch: the checks say so themselves."""
    import shutil

    try:
        import torch
        from triton.backends.nvidia.compiler import get_ptxas  # noqa: F401 -- the NVIDIA backend is there

        from dbunet.plugins import aot

        if not torch.cuda.is_available():
            return {}
        major, minor = torch.cuda.get_device_capability()
        own = aot.triton_ptxas(major * 10 + minor).release
    except Exception:  # noqa: BLE001 -- reported by the checks
        return {}
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return pick_ptxas(major * 10 + minor, own, [Path(cuda_home) / "bin" / "ptxas", shutil.which("ptxas")])


def pick_ptxas(cc: int, own: str, candidates: list) -> dict:
    """Where Triton's own ptxas (CUDA `own`) is below the floor for sm_`cc` (aot.SOUND_ASSEMBLER), the first of
    `candidates` (a CUDA toolkit's) that is not, for TRITON_PTXAS_PATH: "used" is its path, None where none is
    (the checks then meet the launcher's refusal). Facts for the report under "ptxas"."""
    from dbunet.plugins import aot

    least = aot.SOUND_ASSEMBLER[cc].least if cc in aot.SOUND_ASSEMBLER else None
    facts = {"triton": own, "floor": ".".join(map(str, least)) if least else None}
    if not least or aot.cuda_release(own) >= least:
        return facts
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            release = aot.ptxas_release(Path(candidate))
            if aot.cuda_release(release) >= least:
                return facts | {"used": str(candidate), "release": release}
    return facts | {"used": None}


def run(args, save: Callable[[dict], None] = lambda results: None, env: dict | None = None) -> dict:
    """Every check in turn, each in its own process; `save` gets the results after each, so a run cut short still
    leaves its report."""
    results = {}
    for name in CHECKS:
        if args.only and name not in args.only:
            continue
        entry = in_own_process(name, args, env or dict(os.environ))
        results[name] = entry
        save(results)
        print(f"{name:<15} {entry['status']:<8} {entry['seconds']:7.1f}s  "
              f"{entry.get('reason') or entry.get('error') or ''}"[:300], flush=True)
    return results


def markdown(env: dict, results: dict) -> str:
    lines = [f"GPU check on {env.get('gpu') or 'no GPU'} (Python {env['python']}, torch {env.get('torch')}, "
             f"Triton {env.get('triton')}, cuda-bindings {env.get('cuda_bindings')})", "",
             *([f"ptxas: {json.dumps(env['ptxas'])}", ""] if env.get("ptxas") else []),
             "| check | status | seconds | figures or reason |", "|---|---|---|---|"]
    for name, r in results.items():
        detail = r.get("reason") or r.get("error") or json.dumps(r.get("figures"), default=str)
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {detail.replace('|', '/')[:600]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.add_argument("--artifacts", type=Path, help="a tiny preset export, FP32 and FP16, for ort_loop")
    parser.add_argument("--only", nargs="*", choices=list(CHECKS), help="run only these checks")
    parser.add_argument("--child", choices=list(CHECKS), help=argparse.SUPPRESS)  # one check, in this process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # where --child writes its entry
    args = parser.parse_args(argv)
    if "triton" not in sys.modules:  # the real compiler, not the interpreter (set before triton is imported)
        os.environ["TRITON_INTERPRET"] = "0"
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("triton was imported in interpreter mode (TRITON_INTERPRET=1): run this in its own process")
    from dbunet import atomic

    if args.child:
        atomic.write_text(args.result, json.dumps(run_check(args.child, args), default=str))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["ptxas"] = sound_ptxas()
    child_env = dict(os.environ)
    if env["ptxas"].get("used"):
        child_env[PTXAS_ENV] = env["ptxas"]["used"]

    def save(results: dict) -> None:
        atomic.write_text(args.out / "gpu_check.json", json.dumps({"environment": env, "checks": results}, indent=2,
                                                                  default=str))
        atomic.write_text(args.out / "gpu_check.md", markdown(env, results))

    results = run(args, save, child_env)
    return 1 if any(r["status"] == "failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
