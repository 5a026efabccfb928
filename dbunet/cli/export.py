"""dbunet-export: compile the cascade to ONNX (FP32, optionally FP16) with parity reports."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dbunet import jsonfile
from dbunet.cli.common import Parser, guarded, path_arg
from dbunet.config import ARCHITECTURES, DEFAULT_PRESET
from dbunet.errors import ExportError, InputError, WeightsError
from dbunet.export.options import ExportOptions, check_options, is_model_folder
from dbunet.export.specs import MAX_TRACE_BATCH
from dbunet.plugins.aot import DEFAULT_CUDA, TARGETS
from dbunet.releases import require_models

DESCRIPTION = """Export every component of the cascade (text_encoder, dbunet, vae_decoder, vae_encoder,
refiner_encoder, gae, refiner_unet) to ONNX, and the whole-step graphs the runtime's loops run
(dbunet_step, refiner_step: UNet + guidance + sampler update in one graph); check each against its
PyTorch reference, and write manifest.json. Without --weights the preset's seeded weights are created
and kept in OUT/model/."""


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="dbunet-export", description=DESCRIPTION)
    model = p.add_argument_group("model")
    model.add_argument("--config",  # None: DEFAULT_PRESET, or (with --weights) what the folder says
                       help="preset (shapes: the trained demo; tiny: the seeded test model; sd15) or a config JSON "
                            f"file (default: {DEFAULT_PRESET})")
    model.add_argument("--weights", type=path_arg,
                       help="a dbunet model folder, or a diffusers SD 1.x/2.x or SDXL folder")
    model.add_argument("--arch", choices=ARCHITECTURES,  # None: dbunet, or a dbunet model folder's own
                       help="with a diffusers folder: dbunet (default) builds a DB-UNet taking an SD folder's matching "
                            "layers; sd1 deploys an SD 1.x/2.x folder's own UNet as it is, sdxl an SDXL base folder's "
                            "(no boxes)")
    model.add_argument("--refiner", type=path_arg, metavar="FOLDER",
                       help="with --arch sdxl: an SDXL refiner folder (StableDiffusionXLImg2ImgPipeline); its UNet "
                            "takes the latents over for the last steps (dbunet-run --high-noise-frac)")
    graph = p.add_argument_group("graphs")
    graph.add_argument("--out", type=path_arg, default=Path("dbunet-artifacts"),
                       help="output directory: new, empty or an earlier export, which it replaces whole once the "
                            "new one is complete (default: dbunet-artifacts)")
    graph.add_argument("--fp16", action="store_true", help="also write an FP16 copy of every component")
    graph.add_argument("--opset", type=int, default=18, help="ONNX opset, 18-20 (default: 18)")
    graph.add_argument("--decomposed", action="store_true",
                       help="inline the dbunet-domain ops into standard ONNX ops (no custom nodes)")
    graph.add_argument("--components", nargs="+", metavar="NAME",
                       help="export only these (a run needs text_encoder, dbunet_step, vae_decoder, refiner_encoder, "
                            "gae, refiner_step)")
    graph.add_argument("--ptx", nargs="*", metavar="TARGET[:CUDA]",
                       help="also compile the fused Triton kernels to PTX for TensorRT plugins, of the PTX ISA the "
                            "target's CUDA driver reads (no GPU needed). TARGET: one of "
                            f"{', '.join(TARGETS)} (sm_87: Jetson Orin, sm_110: Jetson Thor), optionally with the "
                            "CUDA release, e.g. sm_87:12.6 (default releases: "
                            f"{', '.join(f'{t} {c}' for t, c in DEFAULT_CUDA.items())}); no TARGET: every target the "
                            "installed Triton can compile for")
    trace = p.add_argument_group("tracing and parity inputs (the graphs' sizes stay dynamic)")
    trace.add_argument("--height", type=int, help="image height, up to the model's maximum (default: the preset's)")
    trace.add_argument("--width", type=int, help="image width, up to the model's maximum (default: the preset's)")
    trace.add_argument("--batch", type=int, default=2,
                       help=f"batch size, 1..{MAX_TRACE_BATCH} (default: 2, as with guidance)")
    return p


def check_model_source(args) -> None:
    """--config and --arch where the model source would silently ignore them are refused: a dbunet model folder
    brings its own config (and architecture), an SD 1.x or SDXL folder its own configs."""
    if args.weights is None:
        return
    if is_model_folder(args.weights):
        if args.config is not None:
            raise InputError(f"--config {args.config}: {args.weights} is a dbunet model folder, whose config.json "
                             "decides the model; leave --config out")
        path = args.weights / "config.json"
        data = jsonfile.loads(path.read_bytes(), lambda why: WeightsError(f"{path}: {why}"))
        own = data.get("arch", ARCHITECTURES[0]) if isinstance(data, dict) else None  # else loading says what is wrong
        if args.arch is not None and own is not None and args.arch != own:
            raise InputError(f"--arch {args.arch}: {args.weights} is a dbunet model folder of architecture {own}")
    elif args.config is not None and args.arch not in (None, ARCHITECTURES[0]):
        raise InputError(f"--config {args.config} is not used with --arch {args.arch}: the folder's own configs "
                         "decide the model; leave --config out")


def default_ptx_targets() -> tuple[str, ...]:
    """`--ptx` alone: every target the installed Triton can compile for, saying which it cannot and why."""
    from dbunet.plugins.aot import compilable_targets

    targets, left_out = compilable_targets()
    for name, why in left_out.items():
        print(f"--ptx: {name} left out: {why}", file=sys.stderr)
    if not targets:
        raise InputError("--ptx: the installed Triton can compile for no target; name one to see why")
    return targets


@guarded
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    check_model_source(args)
    options = ExportOptions(
        config=args.config or DEFAULT_PRESET, weights=args.weights, out=args.out, fp16=args.fp16, opset=args.opset,
        decomposed=args.decomposed, height=args.height, width=args.width, batch=args.batch,
        components=tuple(args.components) if args.components else None, arch=args.arch or ARCHITECTURES[0],
        refiner=args.refiner,
        ptx_targets=tuple(args.ptx) if args.ptx else default_ptx_targets() if args.ptx is not None else (),
    )
    check_options(options)  # a bad option is said before the libraries below take their seconds to import
    require_models(ExportError, "dbunet-export")
    from dbunet.export.exporter import export

    start = time.perf_counter()

    def report(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    manifest = export(options, report)
    n = len(manifest.artifacts)
    tokenizers = ", ".join(t["file"] for t in (manifest.tokenizer, manifest.tokenizer_2) if t)
    graphs = f"{n} graph{'s' if n != 1 else ''}"
    print(f"wrote {graphs}, {tokenizers} and manifest.json to {args.out} in {time.perf_counter() - start:.1f}s")
    if args.fp16:
        _engines(args.out, report)
    return 0


def _engines(out: Path, report) -> None:
    """FP16 TensorRT engines for this machine's GPU, where TensorRT and cuda-python are installed."""
    from dbunet.runtime.backends.tensorrt import missing_dependencies

    missing = missing_dependencies()
    if missing:
        report(f"TensorRT engines: skipped ({' and '.join(missing)} not installed here); "
               "run dbunet-build on the target GPU")
        return
    from dbunet.engines.builder import build_engines

    build_engines(out, report=report)


if __name__ == "__main__":
    sys.exit(main())
