"""The contract every backend implements: load a graph artifact, run it, close it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dbunet.iospec import GraphSpec

if TYPE_CHECKING:
    from dbunet.generation import Stages
    from dbunet.manifest import Manifest
    from dbunet.runtime.stages import GraphStages
    from dbunet.runtime.tokenizer import ClipTokenizer


class Graph(Protocol):
    spec: GraphSpec

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in spec order, float32 numpy arrays on the host."""

    def close(self) -> None: ...


class Backend(Protocol):
    """What Pipeline.from_artifacts asks of a backend (its name and factory: dbunet.backends)."""

    device: str  # "cpu" or "cuda"

    def default_precision(self, available: set[str]) -> str:
        """The fastest precision on this backend's device among those exported."""

    def artifact_precision(self, precision: str) -> str:
        """The exported files a precision runs from (OpenVINO computes BF16 from the FP32 graphs)."""

    def stages(self, manifest: Manifest, directory: Path, precision: str, tokenizers: list[ClipTokenizer]) -> Stages:
        """The cascade's stages over the verified artifacts of `precision` (the files artifact_precision names);
        one tokenizer per text encoder.
        Stages with `whole_loops` run each denoising loop in one call (TensorRT: one CUDA graph)."""

    def close(self) -> None:
        """Free what the backend itself holds (TensorRT: its CUDA stream), after every pipeline using it closed.
        A pipeline closes the backend it made from a name, never one it was handed."""


class GraphBackend:
    """A backend that runs exported ONNX graphs: `load` one graph, and the stages are graph runs."""

    device: str

    def load(self, path: Path, spec: GraphSpec, identity: str | None = None) -> Graph:  # identity: the sha256
        raise NotImplementedError

    def artifact_precision(self, precision: str) -> str:
        return precision

    def stages(self, manifest: Manifest, directory: Path, precision: str,
               tokenizers: list[ClipTokenizer]) -> GraphStages:
        """Every graph the cascade needs, all verified (inside the directory, hash, external data) before
        the first is loaded."""
        from dbunet.manifest import verify_artifact
        from dbunet.runtime.stages import GraphStages

        cfg = manifest.config
        artifacts = {name: manifest.find(name, precision) for name in cfg.run_graphs}
        paths = {name: verify_artifact(directory, a) for name, a in artifacts.items()}
        graphs = {name: self.load(paths[name], a.spec, a.sha256[a.path]) for name, a in artifacts.items()}
        return GraphStages(graphs, tokenizers, cfg.has_boxes)

    def close(self) -> None:
        """Nothing to free: every session belongs to the stages."""


def check_threads(threads: int | None) -> None:
    """--threads: at least 1, and at most twice the cores unless DBUNET_FORCE_THREADS=1 (oversubscribed pools
    only lose: ONNX Runtime ran 4.5x slower at 16 threads on 2 cores, 60x at 256)."""
    import os

    from dbunet.errors import ConfigError
    from dbunet.scalars import is_whole

    if threads is None:
        return
    if not is_whole(threads) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    cores = os.cpu_count() or 1
    if threads > 2 * cores and os.environ.get("DBUNET_FORCE_THREADS") != "1":
        raise ConfigError(f"threads {threads} is more than twice this machine's {cores} cores, which only slows the "
                          "run down; set DBUNET_FORCE_THREADS=1 to insist")
