"""ONNX Runtime's CUDA provider is used only where it starts.

onnxruntime-gpu lists CUDAExecutionProvider on any machine. Where the driver, the GPU or CUDA's libraries are
missing, a session asked for it comes up on the CPU provider with only a logged message (onnxruntime-gpu 1.31.1 on
a machine without them: "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13").
`dbunet-run` then ran the FP16 graphs on the CPU and said "ONNX Runtime's CUDA provider". The real CPU build answers
a session asked for the provider the same way (the CPU provider, a warning), so these tests only make it list the
provider, as the GPU build does; where a test needs the provider to start, the session says so in the GPU's place.
"""

import re
import subprocess
import sys

import onnxruntime as ort
import pytest
from PIL import Image

from dbunet import backends
from dbunet.cli import run as run_cli
from dbunet.errors import CudaError
from dbunet.manifest import Manifest
from dbunet.runtime.backends import onnxruntime as ort_backend
from dbunet.runtime.backends.onnxruntime import CUDA, OrtBackend, cuda_provider_problem

NOT_STARTED = "'s CUDA provider (did not start: no CUDA device|does not load \\(lib)"


@pytest.fixture(autouse=True)
def _probe_each_test_anew():
    cuda_provider_problem.cache_clear()
    yield
    cuda_provider_problem.cache_clear()


def _listed_as_by_onnxruntime_gpu(monkeypatch) -> None:
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real])


def test_a_cpu_build_of_onnxruntime_has_no_cuda_device_to_offer():
    if CUDA in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here, not the CPU build")
    assert "the CUDA provider needs onnxruntime-gpu" in cuda_provider_problem()
    with pytest.raises(CudaError, match="^device 'cuda': this onnxruntime offers .*needs onnxruntime-gpu$"):
        OrtBackend("cuda")
    assert OrtBackend("auto").device == "cpu"


def test_a_listed_provider_that_does_not_start_is_not_taken_for_cuda(monkeypatch, tiny_artifacts):
    _listed_as_by_onnxruntime_gpu(monkeypatch)
    # the CPU build has no provider library to load, so the device is what is missing; onnxruntime-gpu on a machine
    # without CUDA's libraries names the one its library does not find
    assert re.search(NOT_STARTED, cuda_provider_problem())
    backend = OrtBackend("auto")
    assert backend.device == "cpu" and not backend.whole_loops
    assert backend.default_precision({"fp32", "fp16"}) == "fp32"  # FP16 pays on a GPU only
    with pytest.raises(CudaError, match=f"^device 'cuda': onnxruntime.*{NOT_STARTED}"):
        OrtBackend("cuda")
    name, why = backends.choose_backend(tiny_artifacts)
    assert (name, why) == ("ort", "ONNX Runtime on the CPU (FP32): its CUDA provider did not start")
    assert backends.choose_backend(tiny_artifacts, device="cpu") == ("ort", "ONNX Runtime on the CPU (FP32)")


def test_dbunet_run_says_the_cpu_and_refuses_cuda_where_the_provider_does_not_start(monkeypatch, tiny_artifacts,
                                                                                     tmp_path, capsys):
    _listed_as_by_onnxruntime_gpu(monkeypatch)
    out = tmp_path / "o.png"
    args = ["--artifacts", str(tiny_artifacts), "--prompt", "a cat", "--steps", "2", "--output", str(out)]
    assert run_cli.main(args) == 0
    err = capsys.readouterr().err
    assert "backend: ort fp32 (ONNX Runtime on the CPU (FP32): its CUDA provider did not start)" in err, err
    assert Image.open(out).text["backend"] == "ort/fp32"
    out.unlink()
    assert run_cli.main([*args, "--device", "cuda"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device 'cuda': onnxruntime"), lines
    assert not out.exists()


class _StartedSession(ort.InferenceSession):
    """A real CPU session that says it runs on the CUDA provider when asked for it: the GPU's place."""

    def __init__(self, source, options=None, providers=None, **kwargs):
        self.asked = list(providers or [])
        super().__init__(source, options, providers=["CPUExecutionProvider"], **kwargs)

    def get_providers(self):
        return [CUDA] if CUDA in self.asked else super().get_providers()


def test_cuda_libraries_from_pip_are_loaded_before_the_provider_is_asked_for(monkeypatch, capsys):
    """ONNX Runtime finds CUDA and cuDNN installed by pip (onnxruntime-gpu[cuda,cudnn], torch's CUDA wheels) only
    through its preload_dlls, which prints each library it misses on stdout: dbunet-run's stdout stays its own."""
    _listed_as_by_onnxruntime_gpu(monkeypatch)
    events = []

    def preload_dlls(**kwargs):
        events.append("preload")
        print("Failed to load libcublasLt.so.13: cannot open shared object file")

    class Session(_StartedSession):
        def __init__(self, *args, **kwargs):
            events.append("session")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ort, "preload_dlls", preload_dlls, raising=False)
    monkeypatch.setattr(ort, "InferenceSession", Session)
    assert cuda_provider_problem() is None
    assert events == ["preload", "session"]
    assert capsys.readouterr().out == ""
    assert cuda_provider_problem() is None and events == ["preload", "session"]  # asked once per process
    backend = OrtBackend("auto")
    assert backend.device == "cuda" and backend.whole_loops and backend.default_precision({"fp32", "fp16"}) == "fp16"


def test_a_graph_the_provider_leaves_on_the_cpu_is_refused(monkeypatch, tiny_artifacts):
    """The provider started for the probe but not for a graph (its session came up on the CPU): refused, not run
    on the CPU under the CUDA label."""
    _listed_as_by_onnxruntime_gpu(monkeypatch)
    monkeypatch.setattr(ort_backend, "cuda_provider_problem", lambda: None)
    a = Manifest.read(tiny_artifacts).find("refiner_step", "fp16")
    with pytest.raises(CudaError, match="refiner_step.onnx: ONNX Runtime put it on the CPU, not on the CUDA provider"):
        OrtBackend("cuda").load(tiny_artifacts / a.path, a.spec)
    monkeypatch.setattr(ort, "InferenceSession", _StartedSession)
    assert OrtBackend("cuda").load(tiny_artifacts / a.path, a.spec).device == "cuda"


def test_a_provider_library_that_does_not_load_is_named_with_its_load_error(monkeypatch, tmp_path):
    """Where the provider's library is there but does not load (a CUDA library or the driver missing: onnxruntime-gpu
    1.31.1 here said "libcublasLt.so.13: cannot open shared object file"), the one line carries the loader's own
    error. The library here is a file the loader refuses, in an onnxruntime folder of its own."""
    _listed_as_by_onnxruntime_gpu(monkeypatch)
    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_cuda.so").write_bytes(b"not a shared object")
    monkeypatch.setattr(ort, "__file__", str(tmp_path / "onnxruntime" / "__init__.py"))
    problem = cuda_provider_problem()
    assert "CUDA provider does not load (" in problem and "libonnxruntime_providers_cuda.so" in problem, problem
    assert problem.endswith("cuDNN 9 libraries, e.g. pip install 'onnxruntime-gpu[cuda,cudnn]'")


def test_the_probe_keeps_onnx_runtimes_own_error_lines_off_stderr(tiny_artifacts, tmp_path):
    """ONNX Runtime logs a provider that does not start on stderr, several lines of its own (onnxruntime-gpu from C++,
    the CPU build a Python warning); dbunet-run prints the reason in its one line instead. In a process of its own:
    C++ writes past capsys. (The C++ lines of onnxruntime-gpu 1.31.1 kept off: checked by hand, it installs here.)"""
    code = ("import onnxruntime as ort, sys; from dbunet.cli import run; real = ort.get_available_providers(); "
            "ort.get_available_providers = lambda: ['CUDAExecutionProvider', *real]; sys.exit(run.main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "--artifacts", str(tiny_artifacts), "--prompt", "a cat",
                           "--steps", "1", "--device", "cuda", "--output", str(tmp_path / "o.png")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: device 'cuda': "), done.stderr
