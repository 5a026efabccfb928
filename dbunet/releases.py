"""The libraries dbunet needs beyond its base install, checked before the work begins: require() imports one and
applies its release check, and where it is missing or refused the error names it and the command that installs
it (install(): the README's form, from the checkout). A missing library otherwise ends in an ImportError
traceback, and an older or broken release fails deep inside the library with an error that names neither the
release nor the fix.

polygraphy (the export's parity runs through its ONNX Runtime runner; dbunet-build through its TensorRT
loaders): before 0.49.9 every network is asked for EXPLICIT_BATCH, which TensorRT 11 removed; 0.49.9 maps
np.unicode_, which NumPy 2 removed (every runner call fails); before 0.49.24 every build reads
IBuilderConfig.int8_calibrator, which TensorRT 11 removed.

onnxscript (the export's graph clean-up, dbunet.export.onnx_export.cleanup), each release with the onnx_ir pip
installs beside it today (1.x): 0.3 and 0.4 fold a Constant that reads a function attribute into int(None);
0.5.4 to 0.6.0's rewriter asks for Value.rank, which onnx_ir 1.x no longer has. 0.6.2 and later export every
graph.

Ray (dbunet-serve): Serve answers a full queue with 503 and Retry-After through BackpressureConfig, which came in
2.58; before it, every dbunet-serve died in an ImportError traceback after Ray had started.

OpenVINO (--backend openvino), each release run on the tiny preset's graphs: 2024.0 mistranslates the DB-UNet
step (a Broadcast of rank 7 into a Conv), 2024.1 and 2024.2 the refiner encoder (a ReduceMean without keepdims
into a MatMul); 2025.1's GeLU fusion throws on the GEGLU feed-forward. 2024.3 and every other release since
load them and draw the image ONNX Runtime draws.

Triton (the plugins' PTX, `--ptx` and dbunet-build), each release's compile of every kernel configuration
(tools/ptx_check.py): 3.6 to 3.9 assemble them without spills; 3.3 to 3.5 find their ptxas through another API
and spill in the attention kernel (3.3: 255 registers and 364 B of stack at FP32); 3.10 is not out yet, and a
Triton changes the hidden kernel parameters dbunet strips (dbunet.plugins.aot) from one minor release to the next.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from types import ModuleType

from dbunet.errors import DbunetError

MIN_POLYGRAPHY = (0, 49, 24)
MIN_ONNXSCRIPT = (0, 6, 2)
MIN_OPENVINO = (2024, 3)
BROKEN_OPENVINO = {(2025, 1): "its GeLU fusion throws on the DB-UNet's GEGLU feed-forward"}
OPENVINO_PIN = "openvino>=2024.3,!=2025.1.*"
MIN_RAY = (2, 58)
RAY_PIN = "ray[serve]>=2.58,<3"
TRITON_RANGE = ((3, 6), (3, 10))  # from, up to (not including)
TRITON_PIN = "triton>=3.6,<3.10"
MODEL_LIBRARIES = ("torch", "transformers", "diffusers")  # what dbunet.models imports (the export extra)


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.49.24' -> (0, 49, 24); '10.3.0.26' -> (10, 3, 0): the numeric release, for comparisons."""
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def install(extra: str) -> str:
    """The command that adds one of pyproject's extras, as the README installs dbunet: from its checkout."""
    return f'pip install -e ".[{extra}]"'


def require(name: str, error: type[DbunetError], needed_by: str, extra: str) -> ModuleType:
    """The library `name` imported, in a release its check (CHECKS, where it has one) accepts; else `error`
    saying what `needed_by` needs and the command that installs it (`extra`: the pyproject extra that brings it)."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        raise error(_missing(name, needed_by, extra)) from None
    if name in CHECKS:
        CHECKS[name](module.__version__, error)
    return module


def _missing(name: str, needed_by: str, extra: str) -> str:
    return f"{needed_by} needs {name}, which is not installed; {install(extra)}"


def require_models(error: type[DbunetError], needed_by: str) -> None:
    """The libraries the PyTorch models import (the export extra), checked before a command that builds them
    imports anything: without them it ended in a ModuleNotFoundError traceback. Found, not imported: diffusers
    and transformers take seconds to import, which an export of a dbunet preset never does."""
    for name in MODEL_LIBRARIES:
        if importlib.util.find_spec(name) is None:
            raise error(_missing(name, needed_by, "export"))


def check_polygraphy(version: str, error: type[DbunetError]) -> None:
    """Refuse a polygraphy release that fails with NumPy 2 or TensorRT 11 (`version`: polygraphy.__version__)."""
    if version_tuple(version) < MIN_POLYGRAPHY:
        floor = ".".join(map(str, MIN_POLYGRAPHY))
        raise error(f"polygraphy {version} is older than {floor}: older releases fail with NumPy 2 (np.unicode_) "
                    f"or ask TensorRT 11 for what it removed (EXPLICIT_BATCH, IBuilderConfig.int8_calibrator); "
                    f"pip install 'polygraphy>={floor}'")


def check_onnxscript(version: str, error: type[DbunetError]) -> None:
    """Refuse an onnxscript release whose optimizer fails on dbunet's graphs (`version`: onnxscript.__version__)."""
    if version_tuple(version) < MIN_ONNXSCRIPT:
        floor = ".".join(map(str, MIN_ONNXSCRIPT))
        raise error(f"onnxscript {version} is older than {floor}: its optimizer fails on dbunet's graphs with the "
                    f"onnx_ir releases pip installs today; pip install 'onnxscript>={floor}'")


def check_openvino(version: str, error: type[DbunetError]) -> None:
    """Refuse an OpenVINO release that cannot load dbunet's graphs (`version`: openvino.__version__, e.g.
    '2025.1.0-18503-...'), saying what to install."""
    release = version_tuple(version.split("-")[0])[:2]
    if release < MIN_OPENVINO:
        why = "its ONNX reader mistranslates the DB-UNet step or the refiner encoder"
    elif release in BROKEN_OPENVINO:
        why = BROKEN_OPENVINO[release]
    else:
        return
    raise error(f"OpenVINO {version.split('-')[0]} cannot load dbunet's graphs ({why}); pip install '{OPENVINO_PIN}'")


def check_ray(version: str, error: type[DbunetError]) -> None:
    """Refuse a Ray release whose Serve lacks what dbunet-serve uses (`version`: ray.__version__)."""
    if version_tuple(version)[:2] < MIN_RAY:
        raise error(f"Ray {version} is older than {'.'.join(map(str, MIN_RAY))}, whose Serve brings the back-pressure "
                    f"settings dbunet-serve uses (503 with Retry-After on a full queue); pip install '{RAY_PIN}'")


def check_triton(version: str, error: type[DbunetError]) -> None:
    """Refuse a Triton release outside TRITON_RANGE (`version`: triton.__version__), saying what to install."""
    lowest, beyond = TRITON_RANGE
    release = version_tuple(version)[:2]
    if lowest <= release < beyond:
        return
    why = ("it finds its ptxas through another API and its attention kernel spills" if release < lowest else
           "its kernel parameters are not checked yet")
    raise error(f"Triton {version} cannot compile the plugins' PTX ({why}); pip install '{TRITON_PIN}'")


CHECKS: dict[str, Callable[[str, type[DbunetError]], None]] = {
    "polygraphy": check_polygraphy, "onnxscript": check_onnxscript, "openvino": check_openvino, "ray": check_ray,
    "triton": check_triton}
