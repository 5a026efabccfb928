"""dbunet-build: TensorRT engines for this machine's GPU from an artifacts directory."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dbunet.cli.common import Parser, guarded, path_arg
from dbunet.errors import ConfigError

DESCRIPTION = """Build the FP16 TensorRT engines a run needs (text encoder, DB-UNet step, VAE decoder,
refiner encoder, GAE, refiner step) from an artifacts directory written by dbunet-export --fp16. Engines
are specific to the TensorRT version and the GPU, so build on the target: export on a workstation, copy
the artifacts directory over, run dbunet-build there. Each denoising engine is built for one resolution
(static shapes, as CUDA graphs need); engines whose inputs did not change are reused from the cache."""


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="dbunet-build", description=DESCRIPTION)
    p.add_argument("--artifacts", type=path_arg, default=Path("dbunet-artifacts"), help="default: dbunet-artifacts")
    p.add_argument("--height", type=int, action="append", default=[],
                   help="image height; repeat --height/--width pairs for several resolutions (default: the model's)")
    p.add_argument("--width", type=int, action="append", default=[], help="image width, paired with --height")
    p.add_argument("--max-boxes", type=int, help="box slots the engines take (default: the model's maximum)")
    p.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit (default: TensorRT's)")
    p.add_argument("--timing-cache", type=path_arg, metavar="FILE",
                   help="tactic timing cache to reuse and update (default: ARTIFACTS/engines/timing.cache)")
    p.add_argument("--optimization-level", type=int, choices=range(6), metavar="0-5",
                   help="TensorRT builder optimization level (default: TensorRT's, 3)")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dbunet.engines.builder import BuildOptions, build_engines
    from dbunet.engines.profiles import Resolution

    if len(args.height) != len(args.width):
        raise ConfigError(f"give --height and --width in pairs; got {len(args.height)} heights and "
                          f"{len(args.width)} widths")
    resolutions = tuple(Resolution(h, w) for h, w in zip(args.height, args.width, strict=True))
    options = BuildOptions(resolutions, args.max_boxes, args.workspace, args.timing_cache, args.optimization_level)
    start = time.perf_counter()
    entries = build_engines(args.artifacts, options, lambda line: print(line, file=sys.stderr, flush=True))
    print(f"{len(entries)} engines in {args.artifacts}/engines ({time.perf_counter() - start:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
