"""dbunet-run: generate an image from exported artifacts (torch-free unless --backend torch)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dbunet import backends
from dbunet.boxes import Box
from dbunet.cli.common import (
    Parser,
    ProgressBar,
    add_precision,
    add_whole_loops,
    check_output,
    guarded,
    path_arg,
    print_timings,
)
from dbunet.manifest import Manifest
from dbunet.request import build_request
from dbunet.schedulers import KARRAS_SAMPLERS_IN_WORDS, SCHEDULERS
from dbunet.text import from_command_line

DESCRIPTION = """Generate an image with the DB-UNet cascade from an artifacts directory written by
dbunet-export. Unset sampling options take the model's defaults (from the manifest)."""


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="dbunet-run", description=DESCRIPTION)
    what = p.add_argument_group("what to draw")
    what.add_argument("--prompt", required=True, type=from_command_line, help="the text prompt")
    what.add_argument("--negative-prompt", type=from_command_line,
                      help="what to steer away from (default: none; SDXL folders then use zeros, as diffusers does, "
                      "where an explicit '' is encoded)")
    what.add_argument("--box", action="append", default=[], type=from_command_line, metavar="X0,Y0,X1,Y1:PHRASE",
                      help="a layout box in normalized coordinates and what goes in it; repeatable")
    how = p.add_argument_group("sampling")
    how.add_argument("--steps", type=int, help="denoising steps")
    how.add_argument("--scheduler", choices=SCHEDULERS, help="sampler (default: the model's, ddim for the presets)")
    how.add_argument("--karras-sigmas", action=argparse.BooleanOptionalAction,
                     help=f"{KARRAS_SAMPLERS_IN_WORDS}: sample at Karras et al.'s sigmas (\"DPM++ 2M Karras\"), "
                     "as diffusers' use_karras_sigmas (default: as the model's scheduler file says)")
    how.add_argument("--guidance-scale", type=float, help="classifier-free guidance scale, 0..100; 1 or less runs "
                     "the prompt alone, as diffusers does (default: the model's)")
    how.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
    how.add_argument("--height", type=int, help="image height, a multiple of 8")
    how.add_argument("--width", type=int, help="image width, a multiple of 8")
    how.add_argument("--box-fraction", type=float, help="fraction of the steps the boxes steer (default: 0.3)")
    how.add_argument("--refiner-steps", type=int,
                     help="refiner denoising steps; 0 skips the refiner (SDXL's refiner: the length of its schedule, "
                          "of which it runs the steps past the high noise fraction)")
    how.add_argument("--refiner-strength", type=float, help="how far the refiner re-noises the image, 0..1")
    sdxl = p.add_argument_group("SDXL (--arch sdxl artifacts): micro-conditioning and the refiner")
    sdxl.add_argument("--original-size", metavar="HxW",
                      help="the size the image claims to come from (default: its own)")
    sdxl.add_argument("--crop-top-left", metavar="TOP,LEFT", help="the crop it claims (default: 0,0)")
    sdxl.add_argument("--target-size", metavar="HxW", help="the size it aims at (default: its own)")
    sdxl.add_argument("--high-noise-frac", type=float, metavar="F",
                      help="with SDXL's refiner: the fraction of the noise schedule the base denoises before the "
                           "refiner takes over, 0..1 exclusive (default: 0.8)")
    run = p.add_argument_group("runtime")
    run.add_argument("--artifacts", type=path_arg, default=Path("dbunet-artifacts"),
                     help="directory written by dbunet-export (default: dbunet-artifacts)")
    run.add_argument("--backend", choices=backends.CHOICES, default=backends.DEFAULT, help=backends.describe())
    add_precision(run)
    run.add_argument("--device", default="auto", help=f"{', '.join(backends.DEVICES)} (default: auto)")
    run.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    add_whole_loops(run)
    out = p.add_argument_group("output")
    out.add_argument("--output", type=path_arg, default=Path("out.png"), help="PNG path (default: out.png)")
    out.add_argument("--draw-boxes", action="store_true",
                     help="overlay the boxes, and their phrases where they fit inside the box")
    out.add_argument("--quiet", action="store_true", help="no progress bar or timing table")
    return p


def _options(args) -> dict:
    names = ("negative_prompt", "steps", "scheduler", "karras_sigmas", "guidance_scale", "seed", "height", "width",
             "box_fraction", "refiner_steps", "refiner_strength", "original_size", "crop_top_left", "target_size",
             "high_noise_frac")
    # an option left out is None, which the request reads as the model's default
    return {**{k: getattr(args, k) for k in names}, "boxes": tuple(Box.parse(b) for b in args.box)}


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = _options(args)
    check_output(args.output, suffix=".png", artifacts=args.artifacts)
    # the request against the model before any graph loads (seconds for a large model): a mistake is said at once
    build_request(Manifest.read(args.artifacts).config, args.prompt, **options)
    pipe = backends.open_pipeline(args.artifacts, args.backend, args.precision, args.device, args.threads,
                                  args.whole_loops)
    chosen = f"backend: {pipe.backend_name} {pipe.precision} ({pipe.chosen_because})" if pipe.chosen_because else None
    result = pipe(args.prompt, progress=None if args.quiet else ProgressBar(), **options)
    if chosen and not args.quiet:  # said after the run: a refused request stays one error line
        print(chosen, file=sys.stderr)

    from dbunet.runtime.png import metadata, save_png

    meta = metadata(result, pipe.manifest, pipe.backend_name, pipe.precision)
    save_png(args.output, result, meta, with_boxes=args.draw_boxes)
    if not args.quiet:
        print_timings(result.timings, result.step_times)
    print(f"wrote {args.output} ({result.image.shape[1]}x{result.image.shape[0]}, seed {result.request.seed}, "
          f"{pipe.backend_name}/{pipe.precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
