"""TensorRT backend: engines built by dbunet-build, run with cuda-python (torch-free).

Status: the engine builder (dbunet.engines) exists; the CUDA-graph executor that runs the engines is not
in this version. Loading checks what a run needs and says what is missing in one line.
"""

from __future__ import annotations

from dbunet.errors import ConfigError


def missing_dependencies() -> list[str]:
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("tensorrt")
    try:
        from cuda.bindings import runtime  # noqa: F401
    except ImportError:
        try:
            from cuda import cudart  # noqa: F401  (cuda-python < 12.6)
        except ImportError:
            missing.append("cuda-python")
    return missing


class TrtBackend:
    name = "trt"
    device = "cuda"

    def __init__(self, device: str = "auto", threads: int | None = None) -> None:
        missing = missing_dependencies()
        if missing:
            raise ConfigError(f"--backend trt needs {' and '.join(missing)}, not installed here: on an NVIDIA GPU "
                              "machine, pip install 'dbunet[trt]' and run dbunet-build; or use --backend ort")
        raise ConfigError("--backend trt: the CUDA-graph executor for TensorRT engines is not in this version yet "
                          "(dbunet-build builds the engines); use --backend ort")
