"""manifest.json: what an artifacts directory holds, and the checks before anything runs from it.

Written last by the exporter (its presence marks a complete export); read by every runtime.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dbunet import __version__, atomic, jsonfile, schemas
from dbunet.config import ModelConfig
from dbunet.errors import ArtifactError, ConfigError
from dbunet.iospec import GraphSpec
from dbunet.request import check_defaults

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20  # a real one is a few KB; refuse to parse anything huge


# -- what is verified is what is loaded -------------------------------------------------------------------
# An export switches its directory over in one rename; a run that checked files by path and then opened the path
# again could verify one export and load the other. A pinned directory is reached through an open descriptor
# (/proc/self/fd/N on Linux): every check and every load of a run goes to the same directory, whatever is renamed
# meanwhile. Messages show the name the user gave.
_PINNED: dict[str, str] = {}  # "/proc/self/fd/N" -> the directory as the user named it


class PinnedDirectory:
    """An artifacts directory held open: `path` reaches it while the object lives; close() lets it go."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.fd: int | None = None
        self.path = self.directory
        if Path("/proc/self/fd").is_dir() and self.directory.is_dir():
            try:
                self.fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                return  # unreadable: the manifest check says so in one line
            self.path = Path(f"/proc/self/fd/{self.fd}")
            _PINNED[str(self.path)] = str(self.directory)

    def close(self) -> None:
        if self.fd is not None:
            _PINNED.pop(str(self.path), None)
            os.close(self.fd)
            self.fd, self.path = None, self.directory


def shown(path: str | Path) -> str:
    """A path, or a message naming paths, as the user named them (each pinned directory's descriptor path
    replaced by its name)."""
    text = str(path)
    for pinned, name in _PINNED.items():
        text = re.sub(re.escape(pinned) + r"(?![0-9])", lambda _, name=name: name, text)
    return text


def inside(directory: str | Path, relative: Any, doing: str = "load it") -> Path:
    """`relative` as a path inside `directory`, or ArtifactError. Manifests are untrusted input: no absolute
    path, no '..', no backslash or NUL, and no symlink that resolves outside the directory (`doing`: what is
    refused, for the message)."""
    bad = (not isinstance(relative, str) or not relative or "\\" in relative or "\x00" in relative
           or PurePosixPath(relative).is_absolute() or ".." in PurePosixPath(relative).parts)
    if bad:
        raise ArtifactError(f"the manifest names {relative!r}: not a relative path inside the artifacts directory; "
                            "refusing to load it (re-run dbunet-export)")
    root = Path(directory).resolve()
    path = Path(directory) / relative
    if not path.resolve().is_relative_to(root):
        raise ArtifactError(f"{relative} resolves outside the artifacts directory (a symlink?); refusing to {doing}")
    return path


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
    precision: str  # one of schemas.PRECISIONS
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
        spec = GraphSpec.from_dict(d["component"], d["io"])
        return cls(d["component"], d["precision"], d["files"], d["sha256"], spec, d["opset"],
                   d.get("decomposed", False), d.get("note", ""), d.get("parity", {}))


def export_hint(directory: Path) -> str:
    """What a folder without a manifest is instead, where that is recognisable: a model to export first."""
    if (directory / "config.json").is_file() and (directory / "model.safetensors").is_file():
        return f"; it is a dbunet model folder: export it first (dbunet-export --weights {shown(directory)})"
    if (directory / "model_index.json").is_file() or ((directory / "unet").is_dir() and (directory / "vae").is_dir()):
        return f"; it is a diffusers folder: export it first (dbunet-export --weights {shown(directory)} --arch ...)"
    return ""


@dataclass
class Manifest:
    config: ModelConfig
    weights_sha256: str
    artifacts: list[Artifact]
    tokenizer: dict[str, str]  # {"file": ..., "sha256": ...}
    tools: dict[str, str]
    weights_source: str = ""  # the model folder TorchPipeline can load, relative to the manifest if inside
    plugins: list[dict[str, Any]] = field(default_factory=list)  # PTX of the fused kernels, per target
    tokenizer_2: dict[str, str] | None = None  # SDXL's second text encoder's tokenizer, like `tokenizer`
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

    def missing_for_run(self, precision: str) -> list[str]:
        """The graphs a run needs (the config's run_graphs) that were not exported in `precision`."""
        have = {a.component for a in self.artifacts if a.precision == precision}
        return [name for name in self.config.run_graphs if name not in have]

    def check_runnable(self, precision: str | None, where: str) -> None:
        """Refuses an export from which no run can be made: every graph a run needs, in `precision` (None: in
        at least one precision), e.g. after `dbunet-export --components` wrote only some."""
        if precision is not None and precision not in self.precisions():
            hint = " (dbunet-export --fp16 writes it)" if precision == "fp16" else ""
            raise ArtifactError(f"{where} holds no {precision} graphs, only {', '.join(sorted(self.precisions()))}"
                                f"{hint}")
        held = sorted(self.precisions()) if precision is None else [precision]
        missing = {p: self.missing_for_run(p) for p in held}
        if held and not all(missing.values()):
            return
        have = ", ".join(sorted({f"{a.component}/{a.precision}" for a in self.artifacts})) or "nothing"
        lacks = "; ".join(f"{', '.join(m)} in {p}" for p, m in missing.items()) or "every graph"
        raise ArtifactError(f"{where} cannot run: it lacks {lacks} (it holds {have}); export every component, "
                            "or the precision asked for")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version, "dbunet_version": self.dbunet_version,
            "config": self.config.to_dict(), "weights_sha256": self.weights_sha256,
            "weights_source": self.weights_source, "tokenizer": self.tokenizer, "tools": self.tools,
            **({"tokenizer_2": self.tokenizer_2} if self.tokenizer_2 else {}),
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
            previous = directory.parent / f".{directory.name}.previous"
            if previous.is_dir():
                raise ArtifactError(f"an export into {directory} stopped while switching over; the previous artifacts "
                                    f"are in {previous}: rename it back, or run dbunet-export again")
            if directory.exists():  # e.g. the manifest itself, named instead of its directory
                raise ArtifactError(f"{directory} is a file; the artifacts are the directory dbunet-export wrote"
                                    + (f" ({directory.parent})" if directory.name == MANIFEST else ""))
            raise ArtifactError(f"artifacts directory {directory} does not exist; run dbunet-export first")
        if not path.is_file():
            raise ArtifactError(f"{shown(directory)} has no {MANIFEST}: not an artifacts directory, or its export "
                                f"did not finish{export_hint(directory)}")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{shown(path)} is {path.stat().st_size} bytes, not a manifest dbunet-export writes; "
                                "refusing to read it")
        d = jsonfile.loads(path.read_bytes(),
                           lambda why: ArtifactError(f"{shown(path)} is {why}; re-run dbunet-export"))
        if not isinstance(d, dict):
            raise ArtifactError(f"{shown(path)} is not a manifest (a JSON object expected); re-run dbunet-export")
        fmt, version = d.get("format_version"), str(d.get("dbunet_version", "?"))
        if fmt != FORMAT_VERSION or not compatible_version(version):
            raise ArtifactError(
                f"{shown(directory)} was exported by dbunet {version} (manifest format {fmt}); "
                f"this is dbunet {__version__} (format {FORMAT_VERSION}): re-export with this version"
            )
        try:
            wrong = schemas.problem(d, schemas.MANIFEST)
            if wrong:
                raise ValueError(wrong)
            seen = set()
            for a in d["artifacts"]:
                if set(a["sha256"]) != set(a["files"]):
                    raise ValueError(f"artifact {a['component']!r}: sha256 must name exactly its files")
                if (a["component"], a["precision"]) in seen:  # which of the two a run loads would be arbitrary
                    raise ValueError(f"artifact {a['component']!r} in {a['precision']} is listed twice")
                seen.add((a["component"], a["precision"]))
            tok = d["tokenizer"]
            manifest = cls(
                config=ModelConfig.from_dict(d["config"]), weights_sha256=d["weights_sha256"],
                artifacts=[Artifact.from_dict(a) for a in d["artifacts"]], tokenizer=tok,
                tokenizer_2=d.get("tokenizer_2"),
                tools=d.get("tools", {}), weights_source=d.get("weights_source", ""), plugins=d.get("plugins", []),
                dbunet_version=version, format_version=fmt,
            )
            check_defaults(manifest.config)
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            raise ArtifactError(f"{shown(path)} is malformed ({str(exc)[:200]}); re-run dbunet-export") from None
        # every path it names stays inside the directory: checked here, before anything is loaded
        tokenizer_files = [t["file"] for t in (tok, manifest.tokenizer_2) if t]
        for rel in [*tokenizer_files, *(f for a in manifest.artifacts for f in a.files)]:
            inside(directory, rel)
        return manifest


def verify_file(directory: str | Path, relative: str, expected_sha256: str) -> Path:
    path = inside(directory, relative)
    if not path.is_file():
        raise ArtifactError(f"missing artifact file {shown(path)}; re-run dbunet-export")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ArtifactError(
            f"{shown(path)} is corrupted or was changed after export (sha256 {actual[:12]}..., manifest says "
            f"{expected_sha256[:12]}...); re-run dbunet-export"
        )
    return path


def verify_artifact(directory: str | Path, artifact: Artifact) -> Path:
    """Check every file of an artifact (inside the directory, hash), and that the graph's external data
    names only those files; return the graph's path. Nothing is loaded before this passes."""
    from dbunet.onnx_refs import external_data_locations

    for rel in artifact.files:
        verify_file(directory, rel, artifact.sha256[rel])
    graph = PurePosixPath(artifact.path)
    own = {PurePosixPath(f) for f in artifact.files[1:]}
    for location in external_data_locations(inside(directory, artifact.path).read_bytes(), artifact.path):
        target = graph.parent / location
        if ".." in PurePosixPath(location).parts or PurePosixPath(location).is_absolute() or target not in own:
            raise ArtifactError(f"{artifact.path} reads external data from {location!r}, which is not one of its "
                                "own files in the manifest; refusing to load it (re-run dbunet-export)")
    return inside(directory, artifact.path)


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    tools = {"python": platform.python_version(), "dbunet": __version__}
    # by import name: ONNX Runtime is installed as onnxruntime, onnxruntime-gpu, onnxruntime-openvino, ...
    installed_as = metadata.packages_distributions()
    for module in ("torch", "onnx", "onnxruntime", "onnxscript", "diffusers", "transformers", "tokenizers",
                   "polygraphy"):
        for dist in installed_as.get(module, [])[:1]:
            version = metadata.version(dist)
            tools[module] = version if dist == module else f"{version} ({dist})"
    return tools
