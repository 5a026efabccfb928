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
