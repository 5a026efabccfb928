"""Op benchmark: each fused Triton kernel vs its PyTorch reference, eager and torch.compile'd,
at sd15 shapes (latents 64x64, 32x32, 16x16; batch 2). Needs a CUDA GPU.

    python benchmarks/ops.py [--dtype fp16|fp32] [--repeat 50] [--markdown]

Times are medians of CUDA-event timings after warm-up; GFLOP/s from the ops' FLOP formulas
(dbunet.models.ops), GB/s from the bytes of every input and output touched once.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from dbunet.config import sd15
from dbunet.models import ops
from dbunet.plugins.table import REFERENCES, fused

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def sd15_cases(batch: int = 2, boxes: int = 30, device: str = "cuda"):
    cfg = sd15().unet
    for level, C in enumerate(cfg.block_out_channels):
        side = cfg.sample_size // 2**level
        P = side * side
        tokens = (-(-side // cfg.dca_pool(level))) ** 2
        tag = f"{side}x{side} C={C}"
        yield "box_constraint", tag, lambda d, C=C, side=side, P=P: (
            torch.randn(batch, C, side, side, device=device, dtype=d), torch.randn(batch, P, C, device=device, dtype=d),
            torch.randn(batch, boxes + 1, C, device=device, dtype=d),
            torch.randn(batch, boxes + 1, C, device=device, dtype=d),
            torch.rand(batch, boxes, 4, device=device, dtype=d).sort(-1).values,
            torch.ones(batch, boxes, device=device, dtype=d),
            torch.tensor(0.5, device=device, dtype=d))
        yield "spatial_cross_attention", f"{tag} P={tokens}", lambda d, C=C, P=tokens: (
            torch.randn(batch, P, 2 * C, device=device, dtype=d), torch.randn(batch, P, 2 * C, device=device, dtype=d),
            torch.randn(batch, P, C, device=device, dtype=d), cfg.dca_heads)
        yield "channel_cross_attention", f"{tag} P={tokens}", lambda d, C=C, P=tokens: (
            torch.randn(batch, P, C, device=device, dtype=d) / P**0.5,
            torch.randn(batch, P, 2 * C, device=device, dtype=d) / P**0.5,
            torch.randn(batch, P, 2 * C, device=device, dtype=d))


def flops_and_bytes(op: str, args: tuple, out: torch.Tensor) -> tuple[int, int]:
    tensors = [x for x in args if isinstance(x, torch.Tensor)]
    nbytes = sum(x.numel() * x.element_size() for x in tensors) + out.numel() * out.element_size()
    return FLOPS[op](*[tuple(x.shape) for x in tensors[:4]]), nbytes


FLOPS = {"box_constraint": ops._box_flops, "spatial_cross_attention": ops._sca_flops,
         "channel_cross_attention": ops._cca_flops}


def time_ms(fn, args, repeat: int) -> float:
    for _ in range(5):
        fn(*args)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU: the op benchmark needs one (the kernels' CPU interpreter is for testing only)")
        return 0
    dtype = DTYPES[args.dtype]
    header = ["op", "shape", "eager ms", "compile ms", "fused ms", "fused GFLOP/s",
              "fused GB/s", "vs eager", "vs compile"]
    rows = []
    for op, tag, make in sd15_cases():
        a = make(dtype)
        ref = REFERENCES[op]
        compiled = torch.compile(ref, dynamic=False)
        t_eager, t_comp, t_fused = (time_ms(f, a, args.repeat) for f in (ref, compiled, fused(op)))
        flops, nbytes = flops_and_bytes(op, a, fused(op)(*a))
        rows.append([op, tag, f"{t_eager:.3f}", f"{t_comp:.3f}", f"{t_fused:.3f}", f"{flops / t_fused / 1e6:.0f}",
                     f"{nbytes / t_fused / 1e6:.0f}", f"{t_eager / t_fused:.2f}x", f"{t_comp / t_fused:.2f}x"])
    print(f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}, batch 2, medians of {args.repeat}")
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        print("\n".join("| " + " | ".join(r) + " |" for r in rows))
    else:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for r in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
