"""The polygraphy release dbunet needs, checked where polygraphy is first imported: the export's parity runs
(its ONNX Runtime runner) and dbunet-build (its TensorRT loaders). Older releases fail deep inside polygraphy
with an AttributeError that names neither polygraphy's release nor the fix.

- before 0.49.9 every network is asked for EXPLICIT_BATCH, which TensorRT 11 removed;
- 0.49.9 maps np.unicode_, which NumPy 2 removed (every runner call fails);
- before 0.49.24 every build reads IBuilderConfig.int8_calibrator, which TensorRT 11 removed.
"""

from __future__ import annotations

from types import ModuleType

from dbunet.errors import DbunetError

MIN_POLYGRAPHY = (0, 49, 24)


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.49.24' -> (0, 49, 24); '10.3.0.26' -> (10, 3, 0): the numeric release, for comparisons."""
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def import_polygraphy(error: type[DbunetError], needed_by: str, extra: str) -> ModuleType:
    """polygraphy, or `error` saying what to install: where it is missing, and where it is older than
    MIN_POLYGRAPHY."""
    floor = ".".join(map(str, MIN_POLYGRAPHY))
    try:
        import polygraphy
    except ImportError:
        raise error(f"{needed_by} needs polygraphy, which is not installed; pip install 'dbunet[{extra}]'") from None
    if version_tuple(polygraphy.__version__) < MIN_POLYGRAPHY:
        raise error(f"polygraphy {polygraphy.__version__} is older than {floor}, which {needed_by} needs: older "
                    f"releases fail with NumPy 2 (np.unicode_) or ask TensorRT 11 for what it removed "
                    f"(EXPLICIT_BATCH, IBuilderConfig.int8_calibrator); pip install 'polygraphy>={floor}'")
    return polygraphy
