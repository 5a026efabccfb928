"""manifest.json: what an artifacts directory holds, and the checks before anything runs from it.

Written last by the exporter (its presence marks a complete export); read by every runtime.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbunet import __version__, atomic
from dbunet.config import ModelConfig
from dbunet.errors import ArtifactError, ConfigError
from dbunet.iospec import GraphSpec

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def compatible_version(version: str) -> bool:
    """Artifacts are compatible within one minor release line."""
    return version.split(".")[:2] == __version__.split(".")[:2]


@dataclass
class Artifact:
    component: str
    precision: str  # "fp32" or "fp16"
    files: list[str]  # relative paths: the .onnx first, then any external data
    sha256: dict[str, str]
    spec: GraphSpec
    opset: int
    decomposed: bool = False
    note: str = ""  # e.g. why an fp16 request stayed in fp32
    parity: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.files[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "component": self.component, "precision": self.precision, "files": self.files, "sha256": self.sha256,
            "io": self.spec.to_dict(), "opset": self.opset, "decomposed": self.decomposed, "note": self.note,
            "parity": self.parity,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Artifact:
        return cls(d["component"], d["precision"], d["files"], d["sha256"], GraphSpec.from_dict(d["component"], d["io"]),
                   d["opset"], d.get("decomposed", False), d.get("note", ""), d.get("parity", {}))


@dataclass
class Manifest:
    config: ModelConfig
    weights_sha256: str
    artifacts: list[Artifact]
    tokenizer: dict[str, str]  # {"file": ..., "sha256": ...}
    tools: dict[str, str]
    weights_source: str = ""  # the model folder TorchPipeline can load, relative to the manifest if inside
    plugins: list[dict[str, Any]] = field(default_factory=list)  # PTX of the fused kernels, per target
    dbunet_version: str = __version__
    format_version: int = FORMAT_VERSION

    def find(self, component: str, precision: str) -> Artifact:
        for a in self.artifacts:
            if a.component == component and a.precision == precision:
                return a
        have = sorted({f"{a.component}/{a.precision}" for a in self.artifacts})
        raise ArtifactError(f"no {component} artifact in {precision}; the directory holds: {', '.join(have)}")

    def precisions(self) -> set[str]:
        return {a.precision for a in self.artifacts}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version, "dbunet_version": self.dbunet_version,
            "config": self.config.to_dict(), "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source, "tokenizer": self.tokenizer, "tools": self.tools,
            "plugins": self.plugins,
            "artifacts": [a.to_dict() for a in self.artifacts],
        }

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        """Load and check format and version; file hashes are checked by `verify_file` on use."""
        directory = Path(directory)
        path = directory / MANIFEST
        if not directory.is_dir():
            raise ArtifactError(f"artifacts directory {directory} does not exist; run dbunet-export first")
        if not path.is_file():
            raise ArtifactError(f"{directory} has no {MANIFEST}: not an artifacts directory, or its export did not finish")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc}); re-run dbunet-export") from None
        fmt, version = d.get("format_version"), d.get("dbunet_version", "?")
        if fmt != FORMAT_VERSION or not compatible_version(version):
            raise ArtifactError(
                f"{directory} was exported by dbunet {version} (manifest format {fmt}); this is dbunet {__version__} "
                f"(format {FORMAT_VERSION}): re-export with this version"
            )
        try:
            return cls(
                config=ModelConfig.from_dict(d["config"]), weights_sha256=d["weights_sha256"],
                artifacts=[Artifact.from_dict(a) for a in d["artifacts"]], tokenizer=d["tokenizer"],
                tools=d.get("tools", {}), weights_source=d.get("weights_source", ""), plugins=d.get("plugins", []),
                dbunet_version=version, format_version=fmt,
            )
        except (KeyError, TypeError, ConfigError) as exc:
            raise ArtifactError(f"{path} is malformed ({exc}); re-run dbunet-export") from None


def verify_file(directory: str | Path, relative: str, expected_sha256: str) -> Path:
    path = Path(directory) / relative
    if not path.is_file():
        raise ArtifactError(f"missing artifact file {path}; re-run dbunet-export")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ArtifactError(
            f"{path} is corrupted or was changed after export (sha256 {actual[:12]}..., manifest says "
            f"{expected_sha256[:12]}...); re-run dbunet-export"
        )
    return path


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    tools = {"python": platform.python_version(), "dbunet": __version__}
    for dist in ("torch", "onnx", "onnxruntime", "onnxscript", "diffusers", "transformers", "tokenizers", "polygraphy"):
        try:
            tools[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return tools
