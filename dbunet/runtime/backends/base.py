"""The contract every backend implements: load a graph artifact, run it, close it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from dbunet.iospec import GraphSpec


class Graph(Protocol):
    spec: GraphSpec

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs in spec order, float32 numpy arrays on the host."""

    def close(self) -> None: ...


class Backend(Protocol):
    name: str
    device: str  # "cpu" or "cuda"

    def load(self, path: Path, spec: GraphSpec, identity: str | None = None) -> Graph: ...  # identity: the sha256

    def default_precision(self, available: set[str]) -> str:
        """The fastest precision on this backend's device among those exported."""


def check_threads(threads: int | None) -> None:
    """--threads: at least 1, and at most twice the cores unless DBUNET_FORCE_THREADS=1 (oversubscribed pools
    only lose: ONNX Runtime ran 4.5x slower at 16 threads on 2 cores, 60x at 256)."""
    import os

    from dbunet.errors import ConfigError

    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    cores = os.cpu_count() or 1
    if threads > 2 * cores and os.environ.get("DBUNET_FORCE_THREADS") != "1":
        raise ConfigError(f"threads {threads} is more than twice this machine's {cores} cores, which only slows the "
                          "run down; set DBUNET_FORCE_THREADS=1 to insist")
