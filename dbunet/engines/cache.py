"""Content-addressed engines: a key over everything that changes an engine, and the engines index.

An engine is specific to its ONNX file, the TensorRT version, the GPU (name and compute capability),
its profile shapes, the plugin PTX it embeds and the builder options. The key hashes exactly those, so
an unchanged input is never rebuilt and a changed one always is. The index (engines/index.json, the
engines' own manifest section) lists every engine with its key; the runtime refuses an engine built by
another TensorRT version or for another GPU. Torch-free and TensorRT-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dbunet import atomic, jsonfile, schemas
from dbunet.errors import ArtifactError
from dbunet.manifest import inside, shown

ENGINES_DIR = "engines"
INDEX = "index.json"
INDEX_VERSION = 1


@dataclass(frozen=True)
class Device:
    """What an engine is specific to besides its inputs."""

    tensorrt: str  # tensorrt.__version__
    gpu: str  # device name, e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: int  # e.g. 90

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt} on {self.gpu} (sm_{self.compute_capability})"


@dataclass(frozen=True)
class EngineKey:
    onnx_sha256: str
    device: Device
    shapes: dict[str, Any]  # input -> (min, opt, max)
    plugins: dict[str, str]  # plugin PTX / path identity -> sha256 ("local-functions" when none)
    options: dict[str, Any]  # builder options: strongly typed, workspace, optimization level

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class EngineEntry:
    component: str
    resolution: str  # "512x512", or "any" for components whose shapes do not follow the image size
    key: str
    file: str  # relative to the artifacts directory
    sha256: str
    device: Device
    plugin_path: str  # "aot plugins: ..." or "local functions"
    shapes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineEntry:
        return cls(**{**d, "device": Device(**d["device"])})


def read_index(artifacts: Path) -> list[EngineEntry]:
    path = Path(artifacts) / ENGINES_DIR / INDEX
    if not path.is_file():
        return []
    try:
        data = jsonfile.loads(path.read_bytes(), ValueError)
        wrong = schemas.problem(data, schemas.ENGINES_INDEX)
        if wrong:
            raise ValueError(wrong)
        if data["version"] != INDEX_VERSION:
            raise ValueError(f"index version {data['version']}, expected {INDEX_VERSION}")
        entries = [EngineEntry.from_dict(e) for e in data["engines"]]
        seen = set()
        for e in entries:
            inside(artifacts, e.file)  # untrusted like the manifest: no path may leave the directory
            if (e.component, e.resolution, e.device) in seen:  # which of the two a run loads would be arbitrary
                raise ValueError(f"the {e.component} engine at {e.resolution} for {e.device.describe()} is listed "
                                 "twice")
            seen.add((e.component, e.resolution, e.device))
        return entries
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ArtifactError(f"{shown(path)} is malformed ({str(exc)[:200]}); run dbunet-build again") from None


def write_index(artifacts: Path, entries: list[EngineEntry]) -> None:
    """Atomically; written after every engine it lists, so it never names a missing or half-written file."""
    data = {"version": INDEX_VERSION,
            "engines": [asdict(e) for e in sorted(entries, key=lambda e: (e.component, e.resolution))]}
    atomic.write_text(Path(artifacts) / ENGINES_DIR / INDEX, json.dumps(data, indent=2))


def find_engine(entries: list[EngineEntry], component: str, resolution: str, device: Device) -> EngineEntry:
    """The engine for a component at a resolution on this device, or a one-line reason to run dbunet-build."""
    wanted = "any" if resolution == "any" else resolution
    candidates = [e for e in entries if e.component == component and e.resolution == wanted]
    if not candidates:
        built = sorted({e.resolution for e in entries if e.component == component}) or ["none"]
        raise ArtifactError(f"no TensorRT engine for {component} at {resolution} (built: {', '.join(built)}); "
                            f"run dbunet-build --height H --width W on this machine")
    for e in candidates:
        if e.device == device:
            return e
    other = candidates[0].device
    raise ArtifactError(f"the {component} engine was built with {other.describe()}; this is {device.describe()}: "
                        "engines are specific to both, run dbunet-build on this machine")
