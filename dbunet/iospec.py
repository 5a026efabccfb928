"""Declarative tensor specs: each graph's inputs and outputs, declared once as data.

ONNX dynamic axes, dummy and parity inputs, the manifest and the runtime's input checks all
derive from these declarations. Dims are ints (fixed) or names (symbolic, shared across a graph's
tensors: every "batch" must be the same size). Torch-free.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dbunet.errors import InputError

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64"
    dims: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["dims"]))

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else sizes[d] for d in self.dims)


@dataclass(frozen=True)
class GraphSpec:
    component: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, component: str, d: Mapping[str, Any]) -> GraphSpec:
        return cls(
            component,
            tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
        )

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """{tensor name: {axis: dim name}} for every symbolic dim (torch.onnx's dynamic_axes)."""
        return {
            t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
            if any(isinstance(d, str) for d in t.dims)
        }

    def mismatches(self, inputs: list[tuple[str, str, int]], outputs: list[tuple[str, str, int]]) -> list[str]:
        """What a loaded graph's (name, dtype, rank) inputs and outputs, in order, disagree with: checked when a
        backend loads a graph, so a graph that is not the declared one fails there, not at its first run."""
        problems = []
        for kind, declared, found in (("inputs", self.inputs, inputs), ("outputs", self.outputs, outputs)):
            want = [(t.name, t.dtype, len(t.dims)) for t in declared]
            if want != list(found):
                problems.append(f"{kind} {found} where the manifest declares {want}")
        return problems

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Validate names, dtypes, ranks, fixed dims and symbolic-dim consistency; return the sizes."""
        problems: list[str] = []
        expected = {t.name for t in self.inputs}
        if set(feeds) != expected:
            problems.append(f"inputs {sorted(feeds)} != expected {sorted(expected)}")
        sizes: dict[str, int] = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                continue
            a = feeds[spec.name]
            if str(a.dtype) != spec.dtype:
                problems.append(f"{spec.name}: dtype {a.dtype}, expected {spec.dtype}")
            if a.ndim != len(spec.dims):
                problems.append(f"{spec.name}: rank {a.ndim} {a.shape}, expected dims {spec.dims}")
                continue
            for axis, (dim, size) in enumerate(zip(spec.dims, a.shape, strict=True)):
                if isinstance(dim, int) and dim != size:
                    problems.append(f"{spec.name}: axis {axis} is {size}, expected {dim}")
                elif isinstance(dim, str) and sizes.setdefault(dim, size) != size:
                    problems.append(f"{spec.name}: '{dim}' is {size} here but {sizes[dim]} elsewhere")
        if problems:
            raise InputError(f"{self.component}: " + "; ".join(problems))
        return sizes
