"""tools/gpu_check.py, the prepared GPU check: on this machine (no GPU) every check is skipped with its reason
and the report is written; the launch arithmetic it shares with the TensorRT plugins is checked here too."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from triton_interpreter import require_triton

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


def test_runs_here_and_reports_every_check(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--out", str(tmp_path), "--quick"],
                          capture_output=True, text=True, env=env, timeout=900)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    import gpu_check

    assert list(report["checks"]) == list(gpu_check.CHECKS)
    gpu = report["environment"]["gpu"]
    for name, result in report["checks"].items():
        if gpu is None:  # this machine: skipped, and the reason says what is missing
            assert result["status"] == "skipped" and result["reason"], (name, result)
        else:
            assert result["status"] == "passed", (name, result)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in gpu_check.CHECKS)


def test_concrete_launch_matches_what_the_plugins_compute_under_tensorrt():
    """The AOT check launches with the plugins' own launch functions over concrete numbers; the same shapes give
    the launch the plugin stand-in records (tests/plugins/test_tensorrt_plugins.py)."""
    import gpu_check

    from dbunet.plugins import aot
    from dbunet.plugins.tensorrt_plugins import box_constraint_launch, spatial_attention_launch

    compiled = aot.CompiledKernel("k", "", 4, 1024, {"BLOCK_P": 64, "BLOCK_M": 32}, "sm_90")

    class T:
        def __init__(self, *shape):
            self.shape = shape

    launch, scalars = box_constraint_launch(gpu_check.ConcreteShapes, compiled, gpu_check.Desc(T(2, 320, 45, 37)),
                                            gpu_check.Desc(T(2, 45 * 37, 320)), gpu_check.Desc(T(2, 30, 4)))
    assert (launch.grid_x, launch.grid_y, launch.block_x, launch.shared_mem) == (-(-45 * 37 // 64), 2, 128, 1024)
    assert scalars == (320, 45, 37, 320, 30)
    launch, scalars = spatial_attention_launch(gpu_check.ConcreteShapes, compiled, gpu_check.Desc(T(2, 99, 80)),
                                               gpu_check.Desc(T(2, 99, 40)), 4)
    assert (launch.grid_x, launch.grid_y) == (-(-99 // 32), 8) and scalars == (99, 80, 40, 4, 20, 10)


def test_the_ptx_launch_passes_the_real_driver_bindings_arguments_they_accept():
    """launch_ptx (the aot_ptx check) calls the CUDA driver API, which has never run here: there is no driver.
    The real cuda-bindings convert (and so check) every argument before they look for libcuda, so each call goes
    to the real binding; only the missing driver's error is replaced by success, with the result types the
    bindings return. The kernel parameters are read back as the driver would: inputs, int32 scalars, outputs."""
    import ctypes

    driver = pytest.importorskip("cuda.bindings.driver", reason="cuda-bindings is in the dev extra")
    import gpu_check

    from dbunet.plugins import aot

    ok = driver.CUresult.CUDA_SUCCESS
    results = {"cuModuleLoadData": (ok, driver.CUmodule(0x10)), "cuModuleGetFunction": (ok, driver.CUfunction(0x20))}
    calls, params = [], []

    class NoDriverBeneath:
        def __getattr__(self, name):
            def call(*args):
                try:
                    getattr(driver, name)(*args)
                except (TypeError, ValueError, OverflowError, AttributeError):
                    raise  # arguments the real binding refuses
                except Exception as exc:  # the driver library is absent: the arguments were taken
                    assert "cuda" in str(exc).lower(), exc
                else:
                    pytest.skip("a CUDA driver is installed: the aot_ptx check itself runs here")
                calls.append(name)
                if name == "cuLaunchKernel":  # kernelParams: an array of addresses, one per argument
                    addresses = (ctypes.c_uint64 * 5).from_address(args[9])
                    kinds = (ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32, ctypes.c_uint64)
                    params.extend(kind.from_address(a).value for kind, a in zip(kinds, addresses, strict=True))
                return results.get(name, (ok,))
            return call

    compiled = aot.CompiledKernel("box_constraint_kernel", ".version 8.5\n.target sm_90\n", 4, 0, {}, "sm_90")
    launch = gpu_check.ConcreteLaunch()
    launch.grid_x, launch.block_x = 3, 128
    gpu_check.launch_ptx(NoDriverBeneath(), compiled, launch, [0x1000, 0x2000], (7, -1), [0x3000], stream=0x77)
    assert calls == ["cuModuleLoadData", "cuModuleGetFunction", "cuLaunchKernel", "cuStreamSynchronize",
                     "cuModuleUnload"]
    assert params == [0x1000, 0x2000, 7, -1, 0x3000]


def test_unknown_check_names_are_refused():
    import gpu_check

    with pytest.raises(SystemExit):
        gpu_check.main(["--out", "/nonexistent/never", "--only", "no_such_check"])


def test_the_guided_step_it_times_runs_on_the_cpu_in_fp16_and_fp32():
    """The step the torch_step check times, on the tiny preset on the CPU: shapes, dtypes and the FP16 module
    (its time embedding is cast to the sample's dtype) work before a GPU ever sees them."""
    import gpu_check
    import torch

    from dbunet.config import tiny
    from dbunet.models.dbunet import DBUNet

    cfg = tiny()
    for dtype in (torch.float32, torch.float16):
        unet = DBUNet(cfg.unet).to(dtype).eval()
        with torch.no_grad():
            out = gpu_check.guided_step_of(cfg, 8, 4, "cpu", dtype)(unet)()
        assert out.shape == (1, cfg.unet.in_channels, 8, 8) and out.dtype == dtype and torch.isfinite(out).all()


# Packages dbunet can use that the GPU machine's stated environment lacks (it has Python, torch, Triton, CuPy,
# cuda-bindings, onnx, onnxruntime, pytest and transformers with their dependencies; the project is not installed
# there). Its image has since gained Pillow, onnxscript, onnx-ir and matplotlib: the checks need none of them but
# Pillow (torch_pipeline's scoring, which imported it on the H200), so the others stay listed
ABSENT_ON_THE_GPU_MACHINE = ("jsonschema", "onnxscript", "onnx_ir", "diffusers", "polygraphy", "tensorrt",
                             "openvino", "ray", "fastapi", "matplotlib")

_IMPORT_UNDER_BLOCK = """
import importlib, importlib.abc, json, sys
absent, imports = json.loads(sys.argv[1]), json.loads(sys.argv[2])

class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in absent:
            raise ModuleNotFoundError(f"ABSENT {name}", name=name)

sys.meta_path.insert(0, Absent())
problems = {}
for module, name in imports:  # `import module` or `from module import name` (a submodule or an attribute)
    try:
        imported = importlib.import_module(module)
        if name and not hasattr(imported, name):
            importlib.import_module(f"{module}.{name}")
    except ModuleNotFoundError as exc:
        if str(exc).startswith("ABSENT"):
            problems[f"{module} {name or ''}".strip()] = str(exc)
print(json.dumps(problems))
"""


def test_what_the_checks_import_loads_without_the_packages_the_gpu_machine_lacks():
    """Every module tools/gpu_check.py imports (in any check, read from its source) and what those import in turn
    load with the packages the GPU machine lacks made unimportable: a check that reached for one would fail there,
    after the device time was spent."""
    import ast

    tree = ast.parse((ROOT / "tools" / "gpu_check.py").read_text())
    imports = sorted({(alias.name, None) for node in ast.walk(tree) if isinstance(node, ast.Import)
                      for alias in node.names}
                     | {(node.module, alias.name) for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) and node.module != "__future__" for alias in node.names},
                     key=str)
    assert {("dbunet.export.fp16", "to_fp16"), ("dbunet.plugins", "aot"), ("attention", "attention_graph"),
            ("ops", "sd15_cases"), ("cuda.bindings", "driver")} <= set(imports)  # the walk sees them all
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    proc = subprocess.run([sys.executable, "-c", _IMPORT_UNDER_BLOCK, json.dumps(ABSENT_ON_THE_GPU_MACHINE),
                           json.dumps(imports)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_the_ort_attention_check_runs_its_body_on_the_cpu_provider(monkeypatch):
    """The ort_attention check needs onnxruntime-gpu and a device; its body (the attention exported, the FP16 copy,
    the rewrite, the comparison) runs here on the CPU provider at a small shape, with the device's free-memory
    query the only thing replaced."""
    import types

    import gpu_check

    free = iter(range(10**9, 0, -10**6))
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(mem_get_info=lambda: (next(free), 10**9)))
    monkeypatch.setattr(gpu_check, "ORT_PROVIDER", "CPUExecutionProvider")
    monkeypatch.setattr(gpu_check, "ORT_ATTENTION_SHAPE", (2, 2, 64, 8))
    monkeypatch.setattr(gpu_check, "need_torch_cuda", lambda: fake_torch)
    figures = gpu_check.check_ort_attention(types.SimpleNamespace(quick=True))
    for precision in ("fp32", "fp16"):
        assert {f"{precision}_exported", f"{precision}_rewritten", f"{precision}_max_rel"} <= set(figures)
        assert figures[f"{precision}_rewritten"]["ms"] > 0
    assert figures["fp32_max_rel"] < 1e-4 and figures["fp16_max_rel"] < 2e-2


def test_the_ort_loop_check_runs_its_body_on_the_cpu_provider(monkeypatch, tiny_artifacts):
    """The ort_loop check needs onnxruntime-gpu and a device; its body (dbunet-run's ONNX Runtime path per step and
    as whole loops, FP32 and FP16, compared, timed, and the device memory each holds) runs here on the CPU provider
    at 64x64, with the device's free-memory query the only thing replaced (it answers 1 MB less at each call)."""
    import types

    import gpu_check

    free = iter(range(10**9, 0, -2**20))
    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(mem_get_info=lambda: (next(free), 10**9)))
    monkeypatch.setattr(gpu_check, "need_torch_cuda", lambda: fake_torch)
    monkeypatch.setattr(gpu_check, "ORT_PROVIDER", "CPUExecutionProvider")
    monkeypatch.setattr(gpu_check, "ORT_LOOP_SIDE", 64)
    with pytest.raises(gpu_check.Skip, match="--artifacts"):
        gpu_check.check_ort_loop(types.SimpleNamespace(quick=True, artifacts=None))
    with monkeypatch.context() as m:  # a runtime dependency the machine lacks is a skip with its name, not a failure
        m.setattr(gpu_check, "PIPELINE_NEEDS", ("jsonschema", "no_such_module_here"))
        with pytest.raises(gpu_check.Skip, match="no_such_module_here not installed"):
            gpu_check.check_ort_loop(types.SimpleNamespace(quick=True, artifacts=tiny_artifacts))
    figures = gpu_check.check_ort_loop(types.SimpleNamespace(quick=True, artifacts=tiny_artifacts))
    for precision in ("fp32", "fp16"):
        f = figures[precision]
        assert f["steps_denoise_ms"] > 0 and f["loop_denoise_ms"] > 0 and f["steps"] > 1
        # the CPU provider: only the pinned session's reordered sums differ (measured 7.9e-7 in FP32; 6.2e-4 in FP16,
        # a little over FP16's unit roundoff of 4.9e-4)
        assert f["max_rel"] < (1e-5 if precision == "fp32" else 5e-3)
        assert [s["device"] for s in f["loop_sessions"].values()] == ["cpu"]
        assert f["steps_device_mb"] == f["loop_device_mb"] == 1  # read before loading and after the images


def test_the_fused_ops_check_runs_its_body_here_and_fails_a_wrong_kernel(monkeypatch):
    """The fused_ops check needs a device; its body (each kernel against the reference at the benchmark's shapes,
    then timed) runs here under Triton's interpreter at small shapes, with CUDA's timer and torch.compile (its
    CPU compiler is slow and not what is checked) replaced. A kernel off by more than the op table's FP16 bound
    fails the check."""
    import types

    import gpu_check
    import torch

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs the kernels under Triton's interpreter (the suite's default)")
    require_triton()  # and an interpreter that runs with this NumPy (Triton 3.6 and NumPy 2.4 do not)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ops

    from dbunet.plugins import table

    small = [(c.op, c.label, lambda d, c=c: c.make(torch.Generator().manual_seed(c.seed), d, "cpu"))
             for c in table.CASES[2:3] + table.CASES[5:6] + table.CASES[7:8]]  # one case of each op
    monkeypatch.setattr(ops, "sd15_cases", lambda: iter(small))
    monkeypatch.setattr(gpu_check, "need_torch_cuda", lambda: torch)
    monkeypatch.setattr(gpu_check, "gpu_timing", lambda fn, repeat: (fn(), 1.0)[1])
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    figures = gpu_check.check_fused_ops(types.SimpleNamespace(quick=True))
    rows = figures["ops"]
    assert [r["max_rel_error"] < 5e-3 for r in rows.values()] == [True] * 3
    assert [set(r) - {"max_rel_error"} for r in rows.values()] == [{"eager_ms", "compile_ms", "fused_ms"}] * 2 + [set()]

    fused = table.fused
    monkeypatch.setattr(table, "fused", lambda op: (lambda *a: fused(op)(*a) * 1.01))  # 1% off
    with pytest.raises(AssertionError, match=r"box_constraint .*> 5e-03"):
        gpu_check.check_fused_ops(types.SimpleNamespace(quick=True))


def fake_ptxas(folder: Path, release: str) -> Path:
    """A CUDA toolkit's ptxas as far as the check reads one: its --version line (no toolkit here)."""
    path = folder / f"ptxas-{release}"
    path.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.88'\n")
    path.chmod(0o755)
    return path


def test_the_checks_assemble_with_a_toolkit_ptxas_where_triton_s_own_is_below_the_floor(tmp_path):
    """On the GPU machine Triton 3.6's ptxas is 12.8, below the floor for sm_90 (aot.SOUND_ASSEMBLER), and the CUDA
    image has ptxas 13.0: the checks' processes get it through TRITON_PTXAS_PATH, and the report says so."""
    import gpu_check

    old, new = fake_ptxas(tmp_path, "12.8"), fake_ptxas(tmp_path, "13.0")
    assert gpu_check.pick_ptxas(90, "12.8", [tmp_path / "absent", old, new]) == {
        "triton": "12.8", "floor": "13.0", "used": str(new), "release": "13.0"}
    assert gpu_check.pick_ptxas(90, "12.8", [None, old])["used"] is None  # none found: the launcher refuses
    assert "used" not in gpu_check.pick_ptxas(90, "13.4", [new])  # Triton 3.9's own is sound
    assert gpu_check.pick_ptxas(89, "12.8", [new]) == {"triton": "12.8", "floor": None}


def test_a_check_that_hangs_is_stopped_and_reported_and_the_next_runs(tmp_path, monkeypatch):
    """Each check runs in its own process (a CUDA fault is sticky for the process that met it): one that does
    not finish in its limit is reported failed, with the checks after it run."""
    import argparse

    import gpu_check

    monkeypatch.setitem(gpu_check.LIMITS, "op_table", 0.01)
    args = argparse.Namespace(only=["op_table", "aot_ptx"], out=tmp_path, quick=True, artifacts=None)
    results = gpu_check.run(args, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert results["op_table"]["status"] == "failed" and results["op_table"]["error"] == "did not finish in 0.01 s"
    assert results["aot_ptx"]["status"] == "skipped" and results["aot_ptx"]["reason"]


def test_the_pipeline_check_names_the_libraries_it_lacks(monkeypatch):
    """The GPU machine has neither diffusers nor jsonschema: torch_pipeline says so, as a skip, before any work."""
    import argparse
    import importlib.util

    import gpu_check
    import torch

    monkeypatch.setattr(gpu_check, "need_torch_cuda", lambda: torch)  # as on a GPU
    monkeypatch.setattr(gpu_check, "need_triton", lambda: None)
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("diffusers", "jsonschema") else found(name, *a))
    with pytest.raises(gpu_check.Skip, match=r"^diffusers, jsonschema not installed \(TorchPipeline's VAE"):
        gpu_check.check_torch_pipeline(argparse.Namespace(quick=True))


_TORCH_STEP = """
import json, statistics, sys, time
sys.path.insert(0, {tools!r})
import gpu_check, torch
from dbunet.config import tiny

def timing(fn, repeat):
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)

print(json.dumps(gpu_check.torch_step(tiny(), "cpu", torch.float32, rounds=2, repeat=1, timing=timing,
                                      compiler=lambda module, dynamic: module, size=32)))
"""


def test_the_step_check_alternates_eager_compiled_and_the_kernels():
    """torch_step's body on the CPU (the kernels under Triton's interpreter, a separate process: their registration
    lasts for it): the three timed in alternating rounds, and the kernels' step near the reference's."""
    require_triton()
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _TORCH_STEP.format(tools=str(ROOT / "tools"))], capture_output=True,
                          text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["rounds"] == 2 and all(figures[k] > 0 for k in ("eager_ms", "compile_ms", "eager_triton_ms"))
    assert figures["triton_vs_reference_max_rel"] < 1e-4  # FP32 kernels: IEEE dots, only the summation order differs
