"""CUDA's libraries found where pip put them, for a library the dynamic loader cannot load without them.

onnxruntime-gpu 1.31.1 installed apart from the nvidia-* packages (pip install --target, here beside torch 2.11's
CUDA 13 wheels) failed with "libcublasLt.so.13: cannot open shared object file" although every library it needs
was importable: ONNX Runtime's preload_dlls looks only in its own site folder. Nothing is replaced here: small
shared objects built with the C compiler stand where pip puts CUDA's (`<site>/nvidia/<package>/lib/`), with the
same kind of dependencies (a soname in DT_NEEDED, no run path), and the real dynamic loader resolves them.
"""

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import onnxruntime as ort
import pytest

from dbunet.runtime.backends import onnxruntime as ort_backend
from dbunet.runtime.backends.onnxruntime import CUDA, cuda_provider_problem
from dbunet.runtime.cuda_libraries import load_error, load_with_dependencies, missing_library

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Linux's dynamic loader and /proc/self/maps"),
    pytest.mark.skipif(CC is None, reason="needs a C compiler to build the shared objects the loader reads"),
]


def symbol(library: Path) -> str:
    return "f_" + re.sub(r"\W", "_", library.name)


def shared_object(path: Path, needs: tuple[Path, ...] = ()) -> Path:
    """A shared object at `path` whose DT_NEEDED names each of `needs` by its file name, with no run path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".c")
    calls = "".join(f"int {symbol(n)}(void); " for n in needs)
    body = " + ".join([f"{symbol(n)}()" for n in needs] or ["0"])
    source.write_text(f"{calls}\nint {symbol(path)}(void) {{ return 1 + {body}; }}\n")
    links = [arg for n in needs for arg in (f"-L{n.parent}", f"-l:{n.name}")]
    subprocess.run([CC, "-shared", "-fPIC", "-o", str(path), f"-Wl,-soname,{path.name}", str(source),
                    "-Wl,--no-as-needed", *links], check=True, capture_output=True)
    return path


def loaded_from(name: str) -> list[str]:
    return sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                   if line.endswith("/" + name)})


@pytest.fixture()
def unique():
    """A name part of this test's own: a library once loaded stays in the process, so no two tests share one."""
    return uuid.uuid4().hex[:10]


def test_each_missing_library_is_loaded_from_the_nvidia_folder_that_holds_it(tmp_path, monkeypatch, unique):
    # cublas-like: the top library needs one in site_a, which needs one in site_b (found there, not beside it)
    rand = shared_object(tmp_path / "site_b" / "nvidia" / "cu13" / "lib" / f"libr{unique}.so.10")
    blas = shared_object(tmp_path / "site_a" / "nvidia" / "cublas" / "lib" / f"libb{unique}.so.13", needs=(rand,))
    provider = shared_object(tmp_path / "ort" / "capi" / f"libp{unique}.so", needs=(blas,))
    assert missing_library(load_error(provider)) == blas.name  # the loader alone does not find it
    for site in ("site_a", "site_b"):
        monkeypatch.syspath_prepend(str(tmp_path / site))
    assert load_with_dependencies(provider) is None
    assert loaded_from(blas.name) == [str(blas)] and loaded_from(rand.name) == [str(rand)]
    assert load_with_dependencies(provider) is None  # loaded: nothing more to do


def test_a_library_found_nowhere_is_the_error_that_remains(tmp_path, monkeypatch, unique):
    gone = shared_object(tmp_path / "elsewhere" / f"libg{unique}.so.9")
    provider = shared_object(tmp_path / "ort" / "capi" / f"libp{unique}.so", needs=(gone,))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    error = load_with_dependencies(provider)
    assert error is not None and missing_library(error) == gone.name, error
    assert loaded_from(gone.name) == []


def test_the_drivers_library_is_never_taken_from_a_pip_folder(tmp_path):
    """libcuda.so.1 is the driver's, installed with it: a file of that name in an nvidia folder is not loaded (in a
    process of its own, so that no stand-in libcuda ever sits in the test process)."""
    driver = shared_object(tmp_path / "site" / "nvidia" / "cu13" / "lib" / "libcuda.so.1")
    provider = shared_object(tmp_path / "ort" / "capi" / "libprovider.so", needs=(driver,))
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "from dbunet.runtime.cuda_libraries import load_with_dependencies; "
            "print(load_with_dependencies(Path(sys.argv[2]))); "
            "print(any(l.endswith('/libcuda.so.1') for l in open('/proc/self/maps')))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site"), str(provider)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "LD_LIBRARY_PATH": ""})
    error, loaded = done.stdout.strip().splitlines()
    assert missing_library(error) == "libcuda.so.1" and loaded == "False", done.stdout + done.stderr


def probe_with_provider(tmp_path, monkeypatch, needs: tuple[Path, ...]) -> str | None:
    """cuda_provider_problem() with onnxruntime's provider library a shared object that needs `needs`, in an
    onnxruntime folder of its own, and <tmp>/site on sys.path (where the nvidia folders are)."""
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real])
    shared_object(tmp_path / "onnxruntime" / "capi" / "libonnxruntime_providers_cuda.so", needs=needs)
    monkeypatch.setattr(ort, "__file__", str(tmp_path / "onnxruntime" / "__init__.py"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cuda_provider_problem.cache_clear()
    try:
        return cuda_provider_problem()
    finally:
        cuda_provider_problem.cache_clear()


def test_the_probe_finds_what_the_provider_needs_outside_onnxruntimes_site_folder(tmp_path, monkeypatch, unique):
    """The provider loads once its libraries are found in another site folder, cuDNN (which it opens only when a
    session starts) too: the probe then reports the device, not a library to install (the CPU build's session
    stands for a GPU machine without a GPU; the CUDA build's answer on a GPU is None, which only a GPU can give)."""
    lib = tmp_path / "site" / "nvidia"
    cublas = shared_object(lib / "cu13" / "lib" / f"libcublas{unique}.so.13")
    cudnn = shared_object(lib / "cudnn" / "lib" / f"libcudnn{unique}.so.9")
    monkeypatch.setattr(ort_backend, "CUDNN", cudnn.name)
    problem = probe_with_provider(tmp_path, monkeypatch, needs=(cublas,))
    assert re.search(r"'s CUDA provider did not start: no CUDA device \(no GPU, or a driver too old for CUDA[\d. ]*\)$",
                     problem), problem
    assert loaded_from(cublas.name) == [str(cublas)] and loaded_from(cudnn.name) == [str(cudnn)]


def test_a_cudnn_found_nowhere_is_named(tmp_path, monkeypatch, unique):
    monkeypatch.setattr(ort_backend, "CUDNN", f"libcudnn{unique}.so.9")
    problem = probe_with_provider(tmp_path, monkeypatch, needs=())
    assert re.search(rf"'s CUDA provider needs cuDNN 9, which does not load \(libcudnn{unique}.so.9: cannot open "
                     r"shared object file.*\): pip install 'onnxruntime-gpu\[cuda,cudnn\]'$", problem), problem


def test_a_load_error_names_the_missing_library():
    assert missing_library("libcublasLt.so.13: cannot open shared object file: No such file or directory") == \
        "libcublasLt.so.13"
    assert missing_library("/x/libonnxruntime_providers_cuda.so: undefined symbol: cublasLtCreate") is None


def test_the_current_directory_is_not_searched(tmp_path, monkeypatch, unique):
    """sys.path's empty entry stands for the current directory: a library there is not loaded (a folder a user
    happens to be in is no install)."""
    here = shared_object(tmp_path / "nvidia" / "cu13" / "lib" / f"libh{unique}.so.13")
    provider = shared_object(tmp_path / "ort" / "capi" / f"libp{unique}.so", needs=(here,))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", ["", *sys.path])
    assert missing_library(load_with_dependencies(provider)) == here.name
    assert loaded_from(here.name) == []
