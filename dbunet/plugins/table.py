"""The op table: every fused kernel beside its plain reference, with shapes and a bound per dtype.

One table drives the correctness tests (interpreter on CPU, real kernels on GPU) and the op
benchmark. Bounds are on max |kernel - reference| / max |reference|, the reference in fp32, about 8x the
largest error measured over every case and 5 seeds each (Triton 3.9 interpreter, AMD EPYC CPU):
  fp32  5e-6  measured <= 6.4e-7: same math with IEEE dots; only the summation order differs.
  fp16  5e-3  measured <= 5.8e-4: fp16 inputs round at 4.9e-4, and the attention weights are cast to
              fp16 before the value product (one more rounding of each weight).
A wrong mask, a dropped scale or a lost token is off by 1e-2 or more.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dbunet.models import ops

TOLERANCE = {torch.float32: 5e-6, torch.float16: 5e-3}
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}  # the kernel tables' dtype names (aot_cases, opt_in_cases)


@dataclass(frozen=True)
class Case:
    op: str
    label: str
    make: Callable[[torch.Generator, torch.dtype, str], tuple]  # -> args for both implementations

    @property
    def seed(self) -> int:
        """Stable across processes (Python's hash() of a str is salted per process)."""
        return zlib.crc32(f"{self.op}/{self.label}".encode())


def _randn(g, shape, dtype, device, scale=1.0):
    return (torch.randn(shape, generator=g) * scale).to(dtype=dtype, device=device)


def _box_args(B, C, H, W, N, d, on_centres=False):
    def make(g, dtype, device):
        xy = torch.rand(B, N, 2, generator=g) * 0.8 - 0.1  # some boxes start outside [0,1]
        wh = torch.rand(B, N, 2, generator=g) * 0.7 - 0.05  # some are empty (x1 <= x0)
        boxes = torch.cat([xy, xy + wh], -1)
        if on_centres:  # every edge exactly on a pixel centre (x + 0.5) / W, exact in binary for W, H = 2^k
            cells = torch.randint(0, W, (B, N, 4), generator=g).sort(-1).values.float()
            boxes = (cells[..., [0, 1, 3, 2]] + 0.5) / torch.tensor([W, H, W, H])
        boxes = boxes.to(dtype=dtype, device=device)
        valid = (torch.rand(B, N, generator=g) > 0.2).to(dtype=dtype, device=device)  # some padding slots
        return (
            _randn(g, (B, C, H, W), dtype, device), _randn(g, (B, H * W, d), dtype, device),
            _randn(g, (B, N + 1, d), dtype, device), _randn(g, (B, N + 1, C), dtype, device),
            boxes, valid, torch.tensor(0.8, dtype=dtype, device=device),
        )
    return make


def _sca_args(B, P, C, heads):
    """The models' attention: queries and keys of 2C channels, values of C."""
    return _sca_heads_args(B, P, heads, 2 * C // heads, C // heads)


def _sca_heads_args(B, P, heads, dk, dv):
    """SCA inputs with any query and value head sizes (a launch configuration's block pair need not be 2:1)."""
    def make(g, dtype, device):
        return (_randn(g, (B, P, heads * dk), dtype, device, 0.5), _randn(g, (B, P, heads * dk), dtype, device, 0.5),
                _randn(g, (B, P, heads * dv), dtype, device), heads)
    return make


def _cca_args(B, P, C):
    def make(g, dtype, device):
        # LayerNorm'd, projected tokens: unit scale; the Gram sums over P, softened by 1/sqrt(2C)
        s = 1.0 / P**0.5
        return (_randn(g, (B, P, C), dtype, device, s), _randn(g, (B, P, 2 * C), dtype, device, s * 8),
                _randn(g, (B, P, 2 * C), dtype, device))
    return make


CASES = [
    Case("box_constraint", "N=0 5x7", _box_args(2, 24, 5, 7, 0, 24)),
    Case("box_constraint", "N=1 9x9", _box_args(1, 32, 9, 9, 1, 32)),
    Case("box_constraint", "N=30 13x11", _box_args(2, 40, 13, 11, 30, 40)),
    Case("box_constraint", "N=6 8x8 edges on pixel centres", _box_args(1, 16, 8, 8, 6, 16, on_centres=True)),
    Case("spatial_cross_attention", "P=35 C=24 h=2", _sca_args(2, 35, 24, 2)),
    Case("spatial_cross_attention", "P=64 C=40 h=4", _sca_args(1, 64, 40, 4)),
    Case("spatial_cross_attention", "P=99 C=20 h=1", _sca_args(1, 99, 20, 1)),
    Case("channel_cross_attention", "P=35 C=24", _cca_args(2, 35, 24)),
    Case("channel_cross_attention", "P=77 C=40", _cca_args(1, 77, 40)),
]


def aot_cases() -> list[tuple[str, Case]]:
    """(dtype, case) for every launch configuration the TensorRT plugins compile (aot.plugin_configurations): box
    slots or head sizes that select it, 3/4 of each block so its masks are exercised, P = 37 (no block multiple).
    The small shapes of CASES select few of them; the GPU check launches these through the plugins' PTX."""
    from dbunet.plugins.aot import plugin_configurations

    return _configuration_cases(plugin_configurations(), "AOT")


def opt_in_cases() -> list[tuple[str, Case]]:
    """(dtype, case) as aot_cases, for the configurations only Triton's own launcher takes (more than 48 KB of
    shared memory: aot.opt_in_configurations); run through `fused`, the JIT launch."""
    from dbunet.plugins.aot import opt_in_configurations

    return _configuration_cases(opt_in_configurations(), "opt-in")


def _configuration_cases(configurations: list[tuple[str, str, dict]], tag: str) -> list[tuple[str, Case]]:
    cases = []
    for kernel, dtype, shape in configurations:
        if kernel == "box_constraint":
            n = shape["slots"] * 3 // 4 - 1
            case = Case("box_constraint", f"{tag} N={n} 7x9", _box_args(1, 40, 7, 9, n, 24))
        else:
            dk, dv = (shape[d] - shape[d] // 4 for d in ("dk", "dv"))
            case = Case("spatial_cross_attention", f"{tag} P=37 dk={dk} dv={dv} h=2",
                        _sca_heads_args(1, 37, 2, dk, dv))
        cases.append((dtype, case))
    return cases


REFERENCES = {
    "box_constraint": ops.box_constraint_reference,
    "spatial_cross_attention": ops.spatial_cross_attention_reference,
    "channel_cross_attention": ops.channel_cross_attention_reference,
}


def fused(op: str) -> Callable:
    from dbunet.plugins import launch

    return getattr(launch, op)


def max_rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-12))


def reference_fp32(op: str, args: tuple) -> torch.Tensor:
    """The reference evaluated in fp32 on the inputs' (possibly fp16-rounded) values."""
    up = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return REFERENCES[op](*up)
