"""End-to-end wall time of one image: ONNX Runtime vs the PyTorch reference, same process, same run.

    python benchmarks/e2e_tiny.py [--artifacts DIR] [--repeat 5] [--steps N]

Exports the tiny preset first when DIR has no manifest. Runs the two pipelines alternately (so
machine noise hits both alike) and reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=Path("dbunet-artifacts"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the preset's)")
    args = p.parse_args()
    if not (args.artifacts / "manifest.json").is_file():
        from dbunet.export.exporter import ExportOptions, export

        export(ExportOptions(out=args.artifacts, fp16=True), report=print)

    import torch

    from dbunet.models.pipeline import TorchPipeline
    from dbunet.runtime import Pipeline

    ort_pipe = Pipeline.from_artifacts(args.artifacts)
    torch_pipe = TorchPipeline.from_artifacts(args.artifacts)
    opts = dict(boxes=["0.1,0.2,0.6,0.9:a red cat"], seed=0)
    if args.steps:
        opts["steps"] = args.steps
    for pipe in (ort_pipe, torch_pipe):  # warm-up: first-run allocations and lazy inits
        pipe("warm up", **opts)
    times: dict[str, list[float]] = {"ort": [], "torch": []}
    for i in range(args.repeat):
        for name, pipe in (("ort", ort_pipe), ("torch", torch_pipe)):
            time.sleep(0.2)  # let the other runtime's worker threads stop spinning before timing this one
            t0 = time.perf_counter()
            pipe("a red cat on a sofa", **{**opts, "seed": i})
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"steps: {ort_pipe.request('x', **opts).steps}, repeats: {args.repeat}, precision: {ort_pipe.precision}")
    for k, v in times.items():
        print(f"{k:<6} median {med[k] * 1000:8.1f} ms   runs: {', '.join(f'{x * 1000:.0f}' for x in v)}")
    print(f"torch / ort = {med['torch'] / med['ort']:.2f}x")


if __name__ == "__main__":
    main()
