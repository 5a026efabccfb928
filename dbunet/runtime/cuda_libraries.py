"""CUDA's libraries where pip put them, for a shared library that needs them (ONNX Runtime's CUDA provider).

pip installs CUDA and cuDNN as nvidia-* packages, each library in `nvidia/<package>/lib/` of whichever site folder
the package went to, and nothing puts those folders on the dynamic loader's path. ONNX Runtime's `preload_dlls`
looks only in the site folder onnxruntime itself was installed to, so an onnxruntime-gpu installed apart from them
(a virtual environment over system site-packages that hold torch's CUDA wheels, `pip install --target`) did not
load although every library it needs was importable. Here each library the loader reports missing is looked up in
the nvidia folders of every sys.path entry and loaded by its path, so that its soname satisfies the dependency.
Only what the loader reports missing is loaded: never a second copy of a library already in the process.
"""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

MISSING = re.compile(r"([\w.+-]+\.so(?:\.\d+)*): cannot open shared object file")
DRIVER = "libcuda.so"  # the driver's library is not a pip package: missing, it is the machine's to install
MOST = 32  # libraries loaded for one library at most (ONNX Runtime's CUDA provider needs about eight)


def load_error(library: Path | str) -> str | None:
    """The dynamic loader's error for `library` (a path, or a file name the loader searches for and finds among
    those already loaded by their soname), or None once it is loaded."""
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return str(exc)
    return None


def missing_library(error: str) -> str | None:
    """The file name of the library a load error says was not found ('libcublasLt.so.13'), or None."""
    match = MISSING.search(error)
    return match.group(1) if match else None


def nvidia_library(name: str) -> Path | None:
    """The first `nvidia/*/lib/<name>` in sys.path's order, where pip installs CUDA's and cuDNN's libraries (the
    current directory, which an empty entry stands for, is not searched: a library is no module to find there)."""
    for entry in filter(None, sys.path):
        for found in sorted(Path(entry).glob(f"nvidia/*/lib/{name}")):
            return found
    return None


def load_with_dependencies(library: Path | str, _tried: set[str] | None = None) -> str | None:
    """Load `library`, first loading from pip's nvidia folders each library the loader reports missing (and what
    those miss in turn). Returns the load error that remains (a library found nowhere, the driver), or None."""
    tried = set() if _tried is None else _tried
    while (error := load_error(library)) is not None:
        name = missing_library(error)
        if name is None or name.startswith(DRIVER) or name in tried or len(tried) >= MOST:
            return error
        tried.add(name)
        found = nvidia_library(name)
        if found is None:
            return error
        if (deeper := load_with_dependencies(found, tried)) is not None:
            return deeper
    return None
