"""The architectures dbunet compiles, one module each, collected in one registry (torch-free).

An entry says what a model of that architecture is made of and what each stage of dbunet does with it:
the graphs the exporter writes, the graphs the runtime loads, the TensorRT engines, the benchmark's
components, whether it takes layout boxes and has the DiffuseGAE refiner stage, which config class holds
its denoiser, and what it needs at export. Everything downstream reads these facts instead of testing a
model's `arch` name; the torch code that builds and exports each architecture (its "exporter hooks") is
keyed by the same name in dbunet.models and dbunet.export. A new architecture is one module here plus
those hooks.
"""

from __future__ import annotations

from dbunet.architectures.base import Architecture
from dbunet.architectures.dbunet import DBUNET
from dbunet.architectures.sd1 import SD1
from dbunet.architectures.sdxl import SDXL
from dbunet.errors import ConfigError

REGISTRY: dict[str, Architecture] = {a.name: a for a in (DBUNET, SD1, SDXL)}
NAMES: tuple[str, ...] = tuple(REGISTRY)
DEFAULT = DBUNET.name


def get(name: str, owner: str = "arch") -> Architecture:
    if name not in REGISTRY:
        raise ConfigError(f"{owner} must be one of {', '.join(repr(n) for n in NAMES)}, got {name!r}")
    return REGISTRY[name]


__all__ = ["DBUNET", "DEFAULT", "NAMES", "REGISTRY", "SD1", "SDXL", "Architecture", "get"]
